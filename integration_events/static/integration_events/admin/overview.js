/* Refreshes the integration events overview from its JSON endpoint (same origin, the same
   admin session and permission). No external resources. */
(function () {
  "use strict";
  function text(id, value) {
    var el = document.getElementById(id);
    if (el) { (el.querySelector("a") || el).textContent = String(value); }
  }
  function age(seconds) {
    if (seconds === null || seconds === undefined) { return "none"; }
    var s = Math.floor(seconds);
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min " + (s % 60) + " s"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min"; }
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  function apply(data) {
    var total = 0;
    var dead = data.published.failed;
    Object.keys(data.published).forEach(function (status) {
      total += data.published[status];
      document.querySelectorAll('[data-ie-published="' + status + '"]').forEach(function (el) {
        el.textContent = String(data.published[status]);
      });
    });
    Object.keys(data.received).forEach(function (group) {
      dead += data.received[group].failed;
      Object.keys(data.received[group]).forEach(function (status) {
        document.querySelectorAll("[data-ie-received]").forEach(function (el) {
          if (el.getAttribute("data-ie-received") === group + "|" + status) {
            el.textContent = String(data.received[group][status]);
          }
        });
      });
    });
    text("ie-published-total", total);
    text("ie-received-failed", dead);
    text("ie-blocked-keys", data.blocked_keys);
    text("ie-lag-published", age(data.lag.published));
    text("ie-lag-received", age(data.lag.received));
    text("ie-rate-published", data.per_second.published);
    text("ie-rate-delivered", data.per_second.delivered);
    text("ie-rate-failed", data.per_second.failed);
    // The charts and the 24-hour section are rendered and escaped by the server's templates
    // (integration_events/admin/_chart.html, _history.html).
    var chart = document.getElementById("ie-rate-chart");
    if (chart) { chart.innerHTML = data.chart; }
    var history = document.getElementById("ie-history");
    if (history) {
      var table = document.getElementById("ie-history-table");
      var open = table ? table.open : false;
      history.innerHTML = data.history_html;
      table = document.getElementById("ie-history-table");
      if (table) { table.open = open; }
    }
    var banner = document.getElementById("ie-no-cluster");
    if (banner) { banner.hidden = data.alive_nodes > 0; }
    text("ie-updated", "(updated " + new Date().toLocaleTimeString() + ", every " +
         Math.round(interval / 1000) + " s)");
  }
  var interval = 5000;
  function start() {
    var root = document.getElementById("ie-overview");
    if (!root) { return; }
    var url = root.getAttribute("data-live-url");
    interval = parseInt(root.getAttribute("data-interval"), 10) || 5000;
    function tick() {
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(apply)
        .catch(function () { text("ie-updated", "(refresh failed; retrying)"); })
        .finally(function () { window.setTimeout(tick, interval); });
    }
    window.setTimeout(tick, interval);
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); }
  else { start(); }
})();
