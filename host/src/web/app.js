// The live view: draws the `board` messages of /events (the station works the state out;
// this only draws it) and keeps the clocks of phones at work running between messages.
"use strict";
(function () {
  var board = null;
  var skew = 0; // the station's clock minus ours
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clock(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
  }

  function stateText(tile) {
    switch (tile.state) {
      case "empty": return "empty";
      case "queued": return "queued";
      case "working": return tile.step || "working";
      case "retrying": return tile.step || "retrying";
      case "unplugged": return "unplugged: plug it back in to resume";
      default: return tile.outcome || "done";
    }
  }

  function drawTile(tile) {
    var node = el("article", "tile");
    node.dataset.slot = tile.slot;
    node.dataset.state = tile.state;
    node.dataset.present = String(tile.present);
    if (tile.udid) node.dataset.udid = tile.udid;
    if (tile.outcome) node.dataset.outcome = tile.outcome;
    if (tile.tone) node.dataset.tone = tile.tone;
    var head = el("div", "slot");
    head.appendChild(el("span", null, tile.slot));
    var time = el("span", "clock");
    if (tile.state === "working" || tile.state === "queued" || tile.state === "retrying") {
      time.dataset.since = String(tile.since_ms);
    } else if (tile.elapsed_ms !== null && tile.elapsed_ms !== undefined && tile.state === "done") {
      time.textContent = clock(tile.elapsed_ms);
    }
    head.appendChild(time);
    node.appendChild(head);
    if (tile.model) node.appendChild(el("div", "model", tile.model));
    if (tile.serial) node.appendChild(el("div", "serial", tile.serial));
    node.appendChild(el("div", "what", stateText(tile)));
    if (tile.message && tile.tone !== "ok") node.appendChild(el("div", "message", tile.message));
    if (tile.badges && tile.badges.length) {
      var badges = el("div", "badges");
      tile.badges.forEach(function (b) { badges.appendChild(el("span", "badge", b)); });
      node.appendChild(badges);
    }
    return node;
  }

  var SUCCESS = { activated: true, already_activated: true };
  var RETRY = { interrupted: true, server_error: true };

  function draw() {
    if (!board) return;
    if (board.station_id) $("station").textContent = "Station " + board.station_id;
    $("run").textContent = board.run_id || "";
    document.body.dataset.state = board.ended ? "ended" : "live";
    $("status").textContent = board.ended
      ? (board.stopped_early ? "run stopped early" : "run finished")
      : "live";

    var counts = $("counts");
    counts.replaceChildren();
    var add = function (n, label, cls, key) {
      var c = el("span", "count " + (cls || ""));
      c.dataset.count = key;
      c.appendChild(el("b", null, n));
      c.appendChild(document.createTextNode(label));
      counts.appendChild(c);
    };
    add(board.phones, board.phones === 1 ? "phone" : "phones", "", "phones");
    if (board.working) add(board.working, "working", "", "working");
    if (board.queued) add(board.queued, "queued", "", "queued");
    Object.keys(board.counts).forEach(function (outcome) {
      var tone = SUCCESS[outcome] ? "ok" : RETRY[outcome] ? "retry" : "attention";
      add(board.counts[outcome], outcome, tone, outcome);
    });

    var notice = $("notice");
    notice.hidden = !board.usbmuxd_lost;
    notice.textContent = board.usbmuxd_lost ? "usbmuxd is gone (" + board.usbmuxd_lost + "): the line waits for it" : "";

    var tiles = $("tiles");
    tiles.replaceChildren.apply(tiles, board.tiles.map(drawTile));

    var list = $("attention");
    list.replaceChildren();
    board.attention.forEach(function (a) {
      var li = el("li");
      li.dataset.udid = a.udid;
      li.appendChild(el("b", null, a.slot + " "));
      li.appendChild(el("span", null, (a.serial || a.udid) + " "));
      li.appendChild(el("span", "outcome", a.outcome));
      li.appendChild(el("div", "message", a.message));
      list.appendChild(li);
    });
    $("attention-box").hidden = board.attention.length === 0;
    document.body.dataset.boards = String(Number(document.body.dataset.boards || 0) + 1);
    tickClocks();
  }

  function tickClocks() {
    var now = Date.now() + skew;
    var clocks = document.querySelectorAll(".clock[data-since]");
    for (var i = 0; i < clocks.length; i++) {
      clocks[i].textContent = clock(now - Number(clocks[i].dataset.since));
    }
  }

  function connect() {
    var source = new EventSource("/events");
    source.addEventListener("board", function (e) {
      try {
        board = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      skew = board.now_ms - Date.now();
      draw();
    });
    source.onerror = function () {
      if (board && board.ended) {
        // The run is over and the station stopped serving: keep the last picture.
        source.close();
        $("status").textContent = "run finished; the station no longer serves this view";
        return;
      }
      document.body.dataset.state = "offline";
      $("status").textContent = "station not reachable: reconnecting…";
    };
  }

  setInterval(tickClocks, 1000);
  connect();
})();
