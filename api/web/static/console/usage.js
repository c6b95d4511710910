// The admin console's usage charts: tokens per day by user and by model, requests and refusals
// per day, from GET /v1/admin/usage; drawn with uPlot (vendored, the global `uPlot`), the numbers
// also in a table under each chart and in the figure's data-total / data-series.

import { $, allPages, el, report } from "./core.js";

const PALETTE = ["#3151d3", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#1098ad", "#c2255c", "#5c940d"];
let charts = [];

function dayList(days) {
  const out = [];
  const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
  for (let i = days - 1; i >= 0; i -= 1) out.push(new Date(today - i * 86400000).toISOString().slice(0, 10));
  return out;
}

// Rows {day, <key>, value} -> series by key over the days (zeros where nothing happened).
function seriesOf(rows, days, keyOf, valueOf) {
  const series = new Map();
  for (const row of rows) {
    const key = keyOf(row);
    if (!series.has(key)) series.set(key, new Array(days.length).fill(0));
    const at = days.indexOf(row.day);
    if (at >= 0) series.get(key)[at] += valueOf(row);
  }
  return series;
}

function drawChart(figure, days, series) {
  const plot = figure.querySelector(".plot");
  const names = [...series.keys()];
  const values = names.map((n) => series.get(n));
  const total = values.flat().reduce((a, b) => a + b, 0);
  figure.dataset.total = String(total);
  figure.dataset.series = JSON.stringify(names);
  plot.replaceChildren();
  const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", { textContent: "Day" }),
    ...names.map((n) => el("th", { textContent: n })))),
  el("tbody", {}, ...days.map((day, i) => values.some((v) => v[i]) ? el("tr", {}, el("td", { textContent: day }),
    ...values.map((v) => el("td", { textContent: String(v[i]) }))) : null)));
  const details = figure.querySelector("details") || el("details", {}, el("summary", { textContent: "Data" }));
  details.replaceChildren(details.querySelector("summary"), el("div", { className: "scroll" }, table));
  figure.append(details);
  if (!names.length) {
    plot.append(el("p", { className: "muted small", textContent: "Nothing in this range." }));
    return;
  }
  const xs = days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  const ink = dark ? "#c9cede" : "#3a4052";
  const grid = dark ? "#30364a" : "#e6e8ef";
  const axis = { stroke: ink, grid: { stroke: grid }, ticks: { stroke: grid } };
  const chart = new uPlot({
    width: Math.max(240, plot.clientWidth), height: 220,
    scales: { x: { time: true } },
    axes: [{ ...axis }, { ...axis, size: 56 }],
    series: [{}, ...names.map((n, i) => ({ label: n, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: true } }))],
  }, [xs, ...values], plot);
  charts.push({ chart, plot });
}

export async function loadUsage(tenant) {
  const days = dayList(Number($("usage-days").value));
  const from = days[0];
  const base = { from, tenant };
  for (const { chart } of charts) chart.destroy();
  charts = [];
  const [byUser, byModel, byDay] = await Promise.all([
    allPages("/v1/admin/usage", { ...base, group_by: "user", per_day: "true" }),
    allPages("/v1/admin/usage", { ...base, group_by: "model", per_day: "true" }),
    allPages("/v1/admin/usage", { ...base, group_by: "day" }),
  ]);
  const tokens = (r) => r.total_tokens;
  drawChart($("chart-users"), days, seriesOf(byUser, days, (r) => r.user_email || r.user_id, tokens));
  drawChart($("chart-models"), days, seriesOf(byModel, days, (r) => r.model, tokens));
  const requests = seriesOf(byDay, days, () => "requests", (r) => r.streams);
  const refusals = seriesOf(byDay, days, () => "refusals", (r) => r.refusals || 0);
  drawChart($("chart-requests"), days, new Map([...requests, ...refusals]));
  report("usage-error");
}

export function resizeCharts() {
  for (const { chart, plot } of charts) chart.setSize({ width: Math.max(240, plot.clientWidth), height: 220 });
}
