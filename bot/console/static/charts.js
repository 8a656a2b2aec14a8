// Overview charts: data comes from <script type="application/json" id="chart-data"> (the
// server's JSON), drawn with the vendored ECharts.  Tests read the series back through
// echarts.getInstanceByDom(element).getOption().
(function () {
  "use strict";
  var source = document.getElementById("chart-data");
  if (!source || typeof echarts === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var green = "#0b6e4f";
  var charts = [];

  function percent(value) { return value === null || value === undefined ? "—" : value + "%"; }

  var rateEl = document.getElementById("rate-chart");
  if (rateEl && data.rate) {
    var rate = echarts.init(rateEl, null, { renderer: "canvas" });
    rate.setOption({
      animation: false,
      grid: { left: 8, right: 16, top: 16, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis", valueFormatter: percent },
      xAxis: { type: "value", min: 0, max: 100, axisLabel: { formatter: "{value}%" } },
      yAxis: { type: "category", inverse: true, data: data.rate.grids,
               axisLabel: { width: 120, overflow: "truncate" } },
      series: [{ id: "rate", name: rateEl.getAttribute("data-name"), type: "bar", data: data.rate.rates,
                 itemStyle: { color: green }, barMaxWidth: 22,
                 label: { show: true, position: "right", formatter: function (p) { return percent(p.value); } } }]
    });
    rateEl.style.height = Math.max(200, 40 * data.rate.grids.length + 40) + "px";
    rate.resize();
    charts.push(rate);
  }

  var trendEl = document.getElementById("trend-chart");
  if (trendEl && data.trend) {
    var trend = echarts.init(trendEl, null, { renderer: "canvas" });
    trend.setOption({
      animation: false,
      grid: { left: 8, right: 16, top: 16, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis", valueFormatter: percent },
      xAxis: { type: "category", data: data.trend.days, boundaryGap: false },
      yAxis: { type: "value", min: 0, max: 100, axisLabel: { formatter: "{value}%" } },
      series: [{ id: "trend", name: trendEl.getAttribute("data-name"), type: "line", data: data.trend.rates,
                 connectNulls: true, symbolSize: 6, itemStyle: { color: green }, areaStyle: { opacity: 0.08 } }]
    });
    charts.push(trend);
  }

  window.addEventListener("resize", function () { charts.forEach(function (c) { c.resize(); }); });
})();
