// "Copy" buttons of the portal (a kiosk screen's address, shown once): <button data-fab-copy="<id of the element
// whose text is copied>" data-fab-copied="<what the button says once done>">. Without the clipboard API (plain
// http), the text is selected for the user to copy.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-fab-copy]");
  if (!button) return;
  event.preventDefault();
  const source = document.getElementById(button.dataset.fabCopy);
  if (!source) return;
  const select = () => {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  };
  const done = () => { button.textContent = button.dataset.fabCopied || button.textContent; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(source.textContent.trim()).then(done, select);
  } else {
    select();
  }
});
