// ferroflow UI: live updates. A run page polls a small JSON every second while the run
// is not finished and updates its states, counts and logs in place; a list page
// ([data-refresh]) fetches itself every 2 s and swaps its content, unless the reader is
// typing in it. No framework, no build step.
"use strict";
(function () {
  var list = document.querySelector("[data-refresh]");
  if (!list) return;
  var every = Number(list.getAttribute("data-refresh")) || 2000;
  function refresh() {
    var active = document.activeElement;
    if (active && list.contains(active) && /INPUT|SELECT|TEXTAREA/.test(active.tagName)) {
      setTimeout(refresh, every);
      return;
    }
    fetch(location.href, { cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text) {
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.querySelector("[data-refresh]");
          if (fresh) list.innerHTML = fresh.innerHTML;
        }
        setTimeout(refresh, every);
      })
      .catch(function () { setTimeout(refresh, every * 2); });
  }
  setTimeout(refresh, every);
})();
(function () {
  var root = document.querySelector("[data-live]");
  if (!root) return;
  var url = root.getAttribute("data-live");
  var classes = ["ok", "fail", "run", "pause", "retry", "cancel", "wait", "skip"];
  function setState(el, s) {
    classes.forEach(function (c) { el.classList.remove("st-" + c); });
    el.classList.add("st-" + s.cls);
  }
  function apply(d) {
    document.querySelectorAll("[data-run-state]").forEach(function (el) {
      setState(el, d);
      el.textContent = d.glyph + " " + d.state;
    });
    document.querySelectorAll("[data-run-took]").forEach(function (el) { el.textContent = d.took; });
    document.querySelectorAll("[data-run-ended]").forEach(function (el) {
      el.textContent = d.ended_at || "-";
    });
    Object.keys(d.tasks).forEach(function (tid) {
      var t = d.tasks[tid];
      document.querySelectorAll('[data-task="' + tid + '"]').forEach(function (el) {
        setState(el, t);
        var label = el.querySelector("[data-task-label]");
        if (label) label.textContent = t.counts;
        var total = el.querySelector("[data-task-total]");
        if (total) total.textContent = t.total;
      });
    });
    var actions = document.getElementById("run-actions");
    if (actions) actions.setAttribute("data-finished", d.finished ? "1" : "0");
    var live = document.getElementById("live-status");
    if (live) live.textContent = d.finished ? "finished" : "live";
    return d.finished;
  }
  var logs = document.querySelector("#log-table[data-follow]");
  function follow(lines) {
    // Append the new log lines (the page follows the logs while the run runs).
    if (!logs || !lines || !lines.length) return;
    var empty = logs.querySelector("td[colspan]");
    if (empty) empty.parentNode.remove();
    var body = logs.tBodies[0] || logs;
    lines.forEach(function (l) {
      var tr = document.createElement("tr");
      tr.className = "log-line";
      [l.time, l.level, l.task_run_id === null ? "" : String(l.task_run_id), l.message].forEach(
        function (text, i) {
          var td = document.createElement("td");
          td.textContent = text;
          if (i === 0) td.className = "hide-narrow";
          if (i === 1) td.className = "lvl-" + l.level;
          if (i === 2) td.className = "num";
          tr.appendChild(td);
        });
      body.appendChild(tr);
    });
    logs.setAttribute("data-follow", String(Number(logs.getAttribute("data-follow")) + lines.length));
    // Follow from the time of the last line shown (the server reads by index from
    // there), skipping the lines of that instant already shown.
    var last = lines[lines.length - 1].at, same = 0;
    for (var i = lines.length - 1; i >= 0 && lines[i].at === last; i--) same++;
    if (logs.hasAttribute("data-since") && Number(logs.getAttribute("data-since")) === last) {
      same += Number(logs.getAttribute("data-skip") || "0");
    }
    if (same < lines.length || logs.hasAttribute("data-since") ||
        logs.getAttribute("data-follow") === String(lines.length)) {
      logs.setAttribute("data-since", String(last));
      logs.setAttribute("data-skip", String(same));
    }
  }
  function pollUrl() {
    if (!logs) return url;
    var since = logs.getAttribute("data-since");
    var q = new URLSearchParams({
      log_offset: since === null ? logs.getAttribute("data-follow") || "0"
        : logs.getAttribute("data-skip") || "0",
      level: logs.getAttribute("data-level") || "",
      q: logs.getAttribute("data-q") || ""
    });
    if (since !== null) q.set("log_since", since);
    return url + "?" + q.toString();
  }
  var SVG = "http://www.w3.org/2000/svg";
  function svgEl(name, attrs, text) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (text !== undefined) el.textContent = text;
    return el;
  }
  var timelineBox = document.getElementById("timeline-box");
  function timeline(t) {
    // Redraw the timeline from the live JSON: new bars, running bars grown to now.
    if (!timelineBox || !t || !t.bars || !t.bars.length) return;
    var href = timelineBox.getAttribute("data-task-href") || "";
    var svg = svgEl("svg", {
      id: "timeline-svg", viewBox: "0 0 " + t.width + " " + t.height, width: t.width,
      height: t.height, role: "img", "aria-label": "when each task ran"
    });
    // The hatching of failed bars (as the page draws it).
    var defs = svgEl("defs", {});
    var hatch = svgEl("pattern", {
      id: "hatch", width: 6, height: 6, patternUnits: "userSpaceOnUse",
      patternTransform: "rotate(45)"
    });
    hatch.appendChild(svgEl("rect", { width: 6, height: 6, fill: "#c23b00" }));
    hatch.appendChild(svgEl("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#fff", "stroke-width": 2 }));
    defs.appendChild(hatch);
    svg.appendChild(defs);
    t.ticks.forEach(function (k, i) {
      var lastTick = i === t.ticks.length - 1;
      svg.appendChild(svgEl("line", { "class": "grid-line", x1: k.x, y1: 12, x2: k.x, y2: t.height }));
      var attrs = { "class": "tick", x: lastTick ? k.x - 2 : k.x + 2, y: 10 };
      if (lastTick) attrs["text-anchor"] = "end";
      svg.appendChild(svgEl("text", attrs, k.label));
    });
    t.bars.forEach(function (b) {
      var a = svgEl("a", { href: href.replace("task=TASK", "task=" + b.task) });
      a.appendChild(svgEl("text", { "class": "lbl", x: 2, y: b.y + 11 }, b.label));
      var rect = svgEl("rect", {
        "class": "bar st-" + b.cls, x: b.x, y: b.y, width: b.w, height: 13, rx: 2,
        "data-task": b.task
      });
      rect.appendChild(svgEl("title", {}, b.title));
      a.appendChild(rect);
      svg.appendChild(a);
    });
    var wrap = document.createElement("div");
    wrap.className = "scroll";
    wrap.appendChild(svg);
    timelineBox.replaceChildren(wrap);
    if (t.cut) {
      var p = document.createElement("p");
      p.className = "muted";
      p.textContent = t.cut + " more rows not drawn.";
      timelineBox.appendChild(p);
    }
  }
  function tick() {
    fetch(pollUrl(), { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (d) follow(d.logs);
        if (d) timeline(d.timeline);
        if (d && apply(d)) return;
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 1000);
})();
