// Behaviour of every portal page, here rather than in inline handlers: the Content-Security-Policy runs scripts
// from the site only.
"use strict";
document.addEventListener("change", (event) => {
  const select = event.target.closest("select.fab-autonav");
  if (select) window.location.href = select.value; // the list filters drawn as a drop-down
});
document.addEventListener("click", (event) => {
  if (event.target.closest("[data-fab-print]")) {
    event.preventDefault();
    window.print();
  }
});
