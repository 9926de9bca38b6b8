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
  }
  function pollUrl() {
    if (!logs) return url;
    var q = new URLSearchParams({
      log_offset: logs.getAttribute("data-follow") || "0",
      level: logs.getAttribute("data-level") || "",
      q: logs.getAttribute("data-q") || ""
    });
    return url + "?" + q.toString();
  }
  function tick() {
    fetch(pollUrl(), { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (d) follow(d.logs);
        if (d && apply(d)) return;
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 1000);
})();
