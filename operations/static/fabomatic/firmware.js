// The Firmware page: while a rollout runs, redraw the rollouts from the status endpoint every 2 s.
// Text only (textContent): nothing from the server is parsed as HTML.
(function () {
  "use strict";
  const box = document.getElementById("fab-rollouts");
  if (!box) return;
  const list = document.getElementById("fab-rollout-list");
  const template = document.getElementById("fab-rollout-template");
  const canary = document.getElementById("fab-canary-label").textContent;
  const warning = document.getElementById("fab-no-runner");
  let idle = 0;
  const running = () => list.querySelector('[data-state="running"]') !== null;

  function cell(row, text, small) {
    const td = document.createElement("td");
    td.textContent = text;
    if (small) {
      const s = document.createElement("small");
      s.textContent = " (" + small + ")";
      td.appendChild(s);
    }
    row.appendChild(td);
    return td;
  }

  function draw(rollouts) {
    // A running rollout keeps its cancel form (server-drawn): redraw only the title and the pushes.
    rollouts.forEach(function (r) {
      let section = list.querySelector('[data-rollout="' + r.id + '"]');
      if (!section) {  // started meanwhile (another tab): newest first
        section = template.content.firstElementChild.cloneNode(true);
        list.prepend(section);
      }
      section.dataset.rollout = r.id;
      section.dataset.state = r.state;
      section.querySelector("h3").textContent = r.image + " · " + r.state_label + " · " + r.started_at + " " + r.started_by;
      const body = section.querySelector("tbody");
      body.replaceChildren();
      r.pushes.forEach(function (p) {
        const row = document.createElement("tr");
        row.dataset.state = p.state;
        const name = cell(row, p.machine);
        if (p.canary) {
          const badge = document.createElement("span");
          badge.className = "fab-badge fab-badge-info";
          badge.textContent = canary;
          name.append(" ", badge);
        }
        cell(row, p.state_label);
        cell(row, p.reason, p.detail);
        cell(row, p.from_version);
        body.appendChild(row);
      });
      if (!r.cancel_url) {
        const form = section.querySelector("form");
        if (form) form.remove();
      }
    });
  }

  function poll() {
    if (!running()) return;
    fetch(box.dataset.statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) return;
        draw(data.rollouts);
        // A rollout waits for a runner that never comes (an install without fabomatic-ota.path): say so.
        idle = running() && !data.runner ? idle + 1 : 0;
        warning.hidden = idle < 3;
      })
      .catch(function () { /* the next round tries again */ })
      .finally(function () { window.setTimeout(poll, 2000); });
  }
  window.setTimeout(poll, 2000);
})();
