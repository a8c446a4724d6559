/* Fab-O-Matic kiosk screen (/kiosk/<secret>/): the dashboard's live updates, read-only, locks first.
 *
 * The server draws the board; this script keeps it live as dashboard.js does the admin's:
 *  - a websocket (the page's data-ws-path) brings "snapshot", "machine.update" and "machine.heartbeat";
 *  - it reconnects with exponential backoff and jitter and catches up from the snapshot sent on every connect,
 *    and stops for good when the server closes with 4404 (the screen's address was revoked or replaced);
 *  - a one-second timer ticks the clock, the times in use, and turns a silent machine OFFLINE by itself;
 *  - tiles stay in the server's order: out of order, to check, blocked, maintenance due, then the rest by name;
 *  - on a TV the board shrinks until every machine fits the screen (a kiosk cannot scroll).
 */
(function () {
  "use strict";

  var root = document.getElementById("kiosk");
  if (!root) return;

  var STATES = ["out_of_order", "to_check", "in_use", "blocked", "maintenance", "offline", "free"];
  var RANK = { out_of_order: 0, to_check: 1, blocked: 2, maintenance: 3 };
  var CLOSE_GONE = 4404;
  var labels = JSON.parse(document.getElementById("k-labels").textContent);
  var onlineMs = parseInt(root.dataset.onlineSeconds, 10) * 1000;
  var container = document.getElementById("k-tiles");
  var template = document.getElementById("k-tile-template");
  var liveBox = root.querySelector(".k-live");
  var liveText = root.querySelector(".k-live-text");
  var clock = root.querySelector(".k-clock");
  var lang = document.documentElement.lang || "en";
  var clockFormat = null;
  try {
    clockFormat = new Intl.DateTimeFormat(lang, { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: root.dataset.timeZone });
  } catch (e) {
    clockFormat = window.Intl ? new Intl.DateTimeFormat(lang, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }) : null;
  }

  var skew = Date.parse(root.dataset.now) - Date.now();
  if (isNaN(skew)) skew = 0;
  var lastSync = Date.now();
  function serverNow() { return Date.now() + skew; }
  function hhmm(ms) { return clockFormat ? clockFormat.format(new Date(ms)) : new Date(ms).toTimeString().slice(0, 5); }

  var tiles = {};
  JSON.parse(document.getElementById("k-tiles-data").textContent).forEach(function (t) { tiles[t.id] = t; });

  // The server decides every state but the one between OFFLINE and FREE, which time decides.
  function effectiveState(tile, now) {
    if (tile.state !== "offline" && tile.state !== "free") return tile.state;
    return tile.last_seen && now - Date.parse(tile.last_seen) < onlineMs ? "free" : "offline";
  }

  function elapsed(sinceIso, now) {
    var s = Math.max(0, Math.floor((now - Date.parse(sinceIso)) / 1000));
    var h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = s % 60;
    return h + ":" + (m < 10 ? "0" : "") + m + ":" + (sec < 10 ? "0" : "") + sec;
  }

  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }

  function order(a, b) {
    var ra = a.state in RANK ? RANK[a.state] : 4, rb = b.state in RANK ? RANK[b.state] : 4;
    if (ra !== rb) return ra - rb;
    var byName = a.name.toLowerCase().localeCompare(b.name.toLowerCase());
    return byName || a.id - b.id;
  }

  function element(id) {
    var el = container.querySelector('.k-tile[data-id="' + id + '"]');
    if (el) return el;
    el = template.content.firstElementChild.cloneNode(true);
    el.dataset.id = String(id);
    var empty = container.querySelector(".k-empty");
    if (empty) empty.remove();
    container.appendChild(el);
    return el;
  }

  function draw(tile, now) {
    var el = element(tile.id);
    var state = effectiveState(tile, now);
    if (el.dataset.state !== state) el.dataset.state = state;
    setText(el.querySelector(".k-name"), tile.name);
    setText(el.querySelector(".k-state"), labels.states[state] || state);
    setText(el.querySelector(".k-user"), tile.user || "");
    var time = el.querySelector(".k-elapsed");
    if (tile.since) time.setAttribute("datetime", tile.since); else time.removeAttribute("datetime");
    setText(time, tile.since ? elapsed(tile.since, now) : "");
    setText(el.querySelector(".k-maint"), tile.maintenance || "");
    return { el: el, state: state };
  }

  function redraw() {
    var now = serverNow();
    var counts = {};
    STATES.forEach(function (s) { counts[s] = 0; });
    var drawn = Object.keys(tiles).map(function (id) { return tiles[id]; }).sort(order).map(function (tile) {
      var d = draw(tile, now);
      counts[d.state] += 1;
      return d.el;
    });
    // Move a tile only when its place changed: the rest of the board stays still.
    drawn.forEach(function (el, i) { if (container.children[i] !== el) container.insertBefore(el, container.children[i] || null); });
    STATES.forEach(function (s) {
      var counter = root.querySelector('.k-counter[data-state="' + s + '"]');
      if (!counter) return;
      counter.dataset.count = String(counts[s]);
      setText(counter.querySelector(".k-count"), String(counts[s]));
      var forms = labels.counters[s];
      if (forms) setText(counter.querySelector(".k-counter-label"), forms[counts[s] === 1 ? 0 : 1]);
    });
    if (clock) setText(clock, hhmm(now));
    if (drawn.length !== fitted) fit();
  }

  // A screen cannot scroll: on a landscape screen the board shrinks until every machine fits (down to 55%). A phone
  // scrolls as any page does.
  var fitted = -1;
  function fit() {
    fitted = Object.keys(tiles).length;
    var zoom = 1;
    root.style.zoom = "";
    if (window.innerWidth < 1000 || window.innerWidth <= window.innerHeight) return;
    while (document.documentElement.scrollHeight > window.innerHeight && zoom > 0.56) {
      zoom -= 0.05;
      root.style.zoom = String(zoom);
    }
  }
  window.addEventListener("resize", fit);

  var socket = null, attempt = 0, retryTimer = null, gone = false;

  function setLive(mode) {
    liveBox.dataset.live = mode;
    if (mode === "live") setText(liveText, labels.live);
    else if (mode === "connecting") setText(liveText, labels.connecting);
    else setText(liveText, labels.reconnecting.replace("%(time)s", hhmm(lastSync + skew)));
  }

  // Revoked or replaced: nothing stays on screen but the message.
  function blank() {
    gone = true;
    tiles = {};
    container.textContent = "";
    root.querySelector(".k-gone").hidden = false;
    liveBox.hidden = true;
    redraw();
  }

  function onMessage(event) {
    var msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (msg.type === "snapshot") {
      var fresh = {};
      msg.tiles.forEach(function (t) { fresh[t.id] = t; });
      Object.keys(tiles).forEach(function (id) {
        if (!fresh[id]) {
          var old = container.querySelector('.k-tile[data-id="' + id + '"]');
          if (old) old.remove();
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
    if (retryTimer || gone) return;
    var base = Math.min(30000, 1000 * Math.pow(2, attempt));
    attempt += 1;
    retryTimer = setTimeout(function () { retryTimer = null; connect(); }, base / 2 + Math.random() * base / 2);
  }

  function connect() {
    if (gone || !window.WebSocket) return;
    if (socket && (socket.readyState === WebSocket.OPEN || socket.readyState === WebSocket.CONNECTING)) return;
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
    socket.onclose = function (event) {
      socket = null;
      if (event.code === CLOSE_GONE) { blank(); return; }
      setLive("down");
      scheduleReconnect();
    };
    socket.onerror = function () { /* onclose follows */ };
  }

  function reconnectNow() {
    if (socket || gone) return;
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    connect();
  }
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) reconnectNow(); });

  window.fabKiosk = {
    tiles: function () { return tiles; },
    socket: function () { return socket; },
  };

  redraw();
  setInterval(redraw, 1000);
  connect();
})();
