/* Fab-O-Matic live dashboard.
 *
 * The server draws every tile; this script keeps them live:
 *  - a websocket (ws/dashboard/) brings "snapshot", "machine.update" and "machine.heartbeat" messages;
 *  - it reconnects with exponential backoff and jitter, and asks for a fresh snapshot on every connect;
 *  - a one-second timer ticks the elapsed time of machines in use, the "last seen" texts, and turns a
 *    machine OFFLINE when its board has been silent for longer than online_seconds (and back to FREE
 *    when it is heard from again).
 * No polling, no page reload, no external library.
 */
(function () {
  "use strict";

  var root = document.getElementById("fab-dashboard");
  if (!root) return;

  var STATES = ["in_use", "blocked", "out_of_order", "to_check", "maintenance", "offline", "free"];
  var labels = JSON.parse(document.getElementById("fab-labels").textContent);
  var onlineMs = parseInt(root.dataset.onlineSeconds, 10) * 1000;
  var machineUrl = root.dataset.machineUrl || "";
  var container = document.getElementById("fab-tiles");
  var template = document.getElementById("fab-tile-template");
  var liveBox = root.querySelector(".fab-live");
  var liveText = root.querySelector(".fab-live-text");
  var lang = document.documentElement.lang || "en";
  var relative = window.Intl && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(lang, { numeric: "auto" }) : null;
  var clockFormat = window.Intl ? new Intl.DateTimeFormat(lang, { hour: "2-digit", minute: "2-digit" }) : null;

  // Server time minus browser time: tiles carry server timestamps, the timer runs on the browser's clock.
  var skew = Date.parse(root.dataset.now) - Date.now();
  if (isNaN(skew)) skew = 0;
  var lastSync = Date.now();
  function serverNow() { return Date.now() + skew; }

  var tiles = {}; // id -> tile data, as sent by the server
  JSON.parse(document.getElementById("fab-tiles-data").textContent).forEach(function (t) { tiles[t.id] = t; });

  // ----- state --------------------------------------------------------------------------------
  function isOnline(tile, now) {
    if (!tile.last_seen) return false;
    return now - Date.parse(tile.last_seen) < onlineMs;
  }

  // The server decides IN USE, BLOCKED, OUT OF ORDER, TO CHECK and MAINTENANCE; between OFFLINE and FREE only time
  // decides.
  function effectiveState(tile, now) {
    if (tile.state === "offline" || tile.state === "free") return isOnline(tile, now) ? "free" : "offline";
    return tile.state;
  }

  // ----- drawing ------------------------------------------------------------------------------
  function elapsed(sinceIso, now) {
    var s = Math.max(0, Math.floor((now - Date.parse(sinceIso)) / 1000));
    var h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = s % 60;
    return h + ":" + (m < 10 ? "0" : "") + m + ":" + (sec < 10 ? "0" : "") + sec;
  }

  function ago(iso, now) {
    if (!iso) return labels.neverSeen;
    var s = Math.round((Date.parse(iso) - now) / 1000);
    if (!relative) return new Date(Date.parse(iso)).toLocaleString(lang);
    var a = Math.abs(s);
    if (a < 60) return relative.format(s, "second");
    if (a < 3600) return relative.format(Math.round(s / 60), "minute");
    if (a < 86400) return relative.format(Math.round(s / 3600), "hour");
    return relative.format(Math.round(s / 86400), "day");
  }

  function setText(el, text) {
    if (el && el.textContent !== text) el.textContent = text;
  }

  function element(id) {
    var el = container.querySelector('.fab-tile[data-id="' + id + '"]');
    if (el) return el;
    el = template.content.firstElementChild.cloneNode(true);
    el.dataset.id = String(id);
    var empty = container.querySelector(".fab-empty");
    if (empty) empty.remove();
    // Keep the server's order (by name).
    var tile = tiles[id], next = null;
    container.querySelectorAll(".fab-tile").forEach(function (other) {
      var t = tiles[other.dataset.id];
      if (!next && t && t.name.localeCompare(tile.name) > 0) next = other;
    });
    container.insertBefore(el, next);
    return el;
  }

  function draw(tile, now) {
    var el = element(tile.id);
    var state = effectiveState(tile, now);
    if (el.dataset.state !== state) el.dataset.state = state;
    var name = el.querySelector(".fab-tile-name");
    setText(name, tile.name);
    if (name.tagName === "A" && machineUrl) name.setAttribute("href", machineUrl.replace("/0/", "/" + tile.id + "/"));
    setText(el.querySelector(".fab-tile-state"), labels.states[state]);
    setText(el.querySelector(".fab-tile-user"), tile.user || "");
    var clock = el.querySelector(".fab-tile-elapsed");
    if (tile.since) {
      clock.setAttribute("datetime", tile.since);
      setText(clock, elapsed(tile.since, now));
    } else {
      clock.removeAttribute("datetime");
      setText(clock, "");
    }
    setText(el.querySelector(".fab-tile-maint"), tile.maintenance || "");
    var fw = el.querySelector(".fab-tile-fw");
    setText(fw, tile.firmware || "—");
    setText(el.querySelector(".fab-tile-ip"), tile.ip || "");
    var seen = el.querySelector(".fab-tile-seen");
    if (tile.last_seen) seen.setAttribute("datetime", tile.last_seen); else seen.removeAttribute("datetime");
    setText(seen, ago(tile.last_seen, now));
    return state;
  }

  function redraw() {
    var now = serverNow();
    var counts = {};
    STATES.forEach(function (s) { counts[s] = 0; });
    Object.keys(tiles).forEach(function (id) { counts[draw(tiles[id], now)] += 1; });
    STATES.forEach(function (s) {
      setText(root.querySelector('.fab-counter[data-state="' + s + '"] .fab-count'), String(counts[s]));
      // The label agrees with the count (Italian: "1 libera", "4 libere"); the server picked the same form.
      var forms = labels.counters && labels.counters[s];
      if (forms) setText(root.querySelector('.fab-counter[data-state="' + s + '"] .fab-counter-label'), forms[counts[s] === 1 ? 0 : 1]);
    });
    setText(document.getElementById("fab-machine-count"), String(Object.keys(tiles).length));
  }

  // ----- the socket ---------------------------------------------------------------------------
  var socket = null, attempt = 0, retryTimer = null;

  function setLive(mode) {
    liveBox.dataset.live = mode;
    if (mode === "live") setText(liveText, labels.live);
    else if (mode === "connecting") setText(liveText, labels.connecting);
    else {
      var at = clockFormat ? clockFormat.format(new Date(lastSync)) : new Date(lastSync).toTimeString().slice(0, 5);
      setText(liveText, labels.reconnecting.replace("%(time)s", at));
    }
  }

  function onMessage(event) {
    var msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (msg.type === "snapshot") {
      var fresh = {};
      msg.tiles.forEach(function (t) { fresh[t.id] = t; });
      // Machines deleted meanwhile disappear.
      Object.keys(tiles).forEach(function (id) {
        if (!fresh[id]) {
          var gone = container.querySelector('.fab-tile[data-id="' + id + '"]');
          if (gone) gone.remove();
        }
      });
      tiles = fresh;
      if (msg.now) skew = Date.parse(msg.now) - Date.now();
    } else if (msg.type === "machine.update" && msg.tile) {
      tiles[msg.tile.id] = msg.tile;
    } else if (msg.type === "machine.heartbeat" && tiles[msg.id]) {
      tiles[msg.id].last_seen = msg.last_seen;
    } else {
      return;
    }
    lastSync = Date.now();
    redraw();
  }

  function scheduleReconnect() {
    if (retryTimer) return;
    // 1 s, 2 s, 4 s ... 30 s, each with jitter so that 500 dashboards do not reconnect in step.
    var base = Math.min(30000, 1000 * Math.pow(2, attempt));
    attempt += 1;
    retryTimer = setTimeout(function () { retryTimer = null; connect(); }, base / 2 + Math.random() * base / 2);
  }

  function connect() {
    if (socket && (socket.readyState === WebSocket.OPEN || socket.readyState === WebSocket.CONNECTING)) return;
    if (!window.WebSocket) return;
    setLive(attempt === 0 ? "connecting" : "down");
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + window.location.host + root.dataset.wsPath);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    socket.onopen = function () { attempt = 0; lastSync = Date.now(); setLive("live"); };
    socket.onmessage = onMessage;
    socket.onclose = function () { socket = null; setLive("down"); scheduleReconnect(); };
    socket.onerror = function () { /* onclose follows */ };
  }

  function reconnectNow() {
    if (socket) return;
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    connect();
  }
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) reconnectNow(); });

  // For the tests and the curious: the live state of the page.
  window.fabDashboard = {
    tiles: function () { return tiles; },
    socket: function () { return socket; },
  };

  redraw();
  setInterval(redraw, 1000);
  connect();
})();
