// sigma0 dashboard: keep the page current without reloading it. Every few seconds ask /board for the live part,
// sending the version shown; the server answers 304 while nothing changed, else the new part, which replaces the
// old one. Read-only: GET requests only.
"use strict";
(function () {
  const live = document.getElementById("live");
  const board = document.getElementById("board");
  const every = Number(document.body.dataset.pollMs || 2000);
  let version = live.dataset.version;

  async function refresh() {
    if (document.hidden) return;
    try {
      const reply = await fetch("/board", { headers: { "If-None-Match": version }, cache: "no-store" });
      if (reply.status === 200) {
        board.innerHTML = await reply.text();
        version = reply.headers.get("ETag") || version;
        live.dataset.version = version;
      }
      live.textContent = "live, checked " + new Date().toLocaleTimeString();
      live.className = "";
    } catch (error) {
      live.textContent = "offline: " + error;
      live.className = "bad";
    }
  }
  setInterval(refresh, every);
})();
