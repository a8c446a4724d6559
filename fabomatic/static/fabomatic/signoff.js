// The sign-off page (machines/training_views.py): while the machine is armed, ask its status every second and show
// the countdown, then who was trained. A file of the site: the Content-Security-Policy runs no inline script.
"use strict";
(() => {
  const box = document.getElementById("fab-signoff");
  if (!box) return;
  const message = box.querySelector("[data-fab-message]");
  const countdown = box.querySelector("[data-fab-countdown]");
  const disarm = document.getElementById("fab-disarm");
  let timer = null;

  function show(status) {
    box.dataset.state = status.state;
    message.textContent = status.message;
    countdown.textContent = status.state === "armed" ? `${status.seconds_left} s` : "";
    if (disarm) disarm.hidden = status.state !== "armed";
    if (status.state !== "armed" && timer !== null) {
      window.clearInterval(timer);
      timer = null;
    }
  }

  async function poll() {
    try {
      const response = await fetch(box.dataset.statusUrl, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (response.ok) show(await response.json());
    } catch (error) {
      // A dropped phone connection: the next poll tries again.
    }
  }

  if (box.dataset.state === "armed") timer = window.setInterval(poll, 1000);
})();
