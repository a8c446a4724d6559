/* The sticker page's Print button (no inline script: the Content-Security-Policy forbids it). */
(function () {
  "use strict";
  var button = document.getElementById("st-print");
  if (button) button.addEventListener("click", function () { window.print(); });
})();
