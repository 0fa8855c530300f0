// 报表 (reports with inline-SVG charts and CSV/XLSX downloads) and 核查 (inspection mode).
// The report's JSON is rendered by shape (numbers → charts, rows → tables), so a new figure in
// the report shows up here without a console change.

import {
  h, clear, get, post, can, qs, fmtTime, siteDate, COLORS, toast, dialog, field, select, input,
  formValues, table, photo, section, loadInto, plateBadge, laneName, session,
} from "./core.js";
import { stageText } from "./records.js";

const PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#ea580c", "#475569"];

const TITLES = {
  passes: "通行统计", by_gate: "按门岗", by_direction: "按方向", by_hour: "按小时", by_lane: "按车道",
  stage_mix: "排放阶段构成", fuel_mix: "燃料类型构成", by_trips: "按车次", by_vehicles: "按车辆数", trips: "车次",
  vehicles: "车辆数", clean_transport: "清洁运输比例", clean_transport_ratio: "清洁运输比例", by_tonnage: "按运量",
  per_cargo: "按货物", cargo: "货物", formula: "计算公式", inputs: "计算输入", ratio: "比例", in_plant: "厂内运输车辆",
  machinery: "非道路移动机械", non_road: "非道路移动机械", stage_shares: "排放阶段占比", thresholds: "A/B级门槛",
  daily_average: "日均车辆", average_daily_vehicles: "日均车辆", normal_days: "常规日", warning_days: "预警日",
  normal: "常规日", warning: "预警日", manual_releases: "人工放行", releases: "人工放行", uploads: "数据上传",
  upload_completeness: "上传完整率", completeness: "完整率", total: "合计", from: "开始", to: "结束",
  in: "进厂", out: "出厂", allow: "允许", deny: "拒绝", tonnes: "吨", sample: "抽样记录", window: "时间窗内通行",
  stage_recheck: "排放阶段复核清单", recheck: "排放阶段复核清单", per_guard: "按门岗人员", daily: "每日异常",
  exceptions: "异常记录", generated_at: "生成时间", name: "名称", captured: "产生", uploaded: "已上传",
  acknowledged: "已确认", failed: "失败", rejected: "被拒", backlog: "积压", oldest_age_s: "最早积压(秒)",
  last_error: "最近错误", last_ack_at: "最近确认", level: "预警级别", strategy: "管控策略", start: "开始",
  end: "结束", source: "来源", in_force: "生效中", gates: "门岗", guard: "门岗人员", requests: "申请", approved: "批准",
  executed: "已执行", plate: "车牌", color: "颜色", lane: "车道", stage: "排放阶段", fuel: "燃料",
  date: "日期", mode: "运输方式", note: "备注", count: "数量", hour: "小时", day: "日期", entries: "进厂",
  exits: "出厂", truck_trips: "货车车次", new_energy_trips: "新能源车次", guo6_trips: "国六车次", other_trips: "其他车次",
  truck_t: "货车运量(t)", new_energy_t: "新能源运量(t)", guo6_t: "国六运量(t)", other_truck_t: "其他货车运量(t)",
  rail_t: "铁路(t)", water_t: "水路(t)", belt_t: "皮带(t)", pipeline_t: "管道(t)", clean_modes_t: "清洁方式(t)",
  clean_t: "清洁运量(t)", total_t: "总运量(t)", ratio_tonnage: "比例(运量)", ratio_tonnage_incl_guo6: "比例(含国六)",
  ratio_trips: "比例(车次)", guo6_trip_share: "国六车次占比", platform: "平台", error: "错误", rule: "要求",
  compliant_trips: "达标车次", trip_share: "车次占比", compliant_vehicles: "达标车辆", vehicle_share: "车辆占比",
  grade_by_trips: "按车次评级", grade_by_vehicles: "按车辆评级", avg_entries: "日均进厂", avg_exits: "日均出厂",
  avg_vehicles: "日均车辆", population: "总体记录数", recheck_total: "复核总数", normal_average: "常规日平均",
  warning_average: "预警日平均", truncated: "已截断", reasons: "原因", stages_seen: "通行记录中的阶段",
  warning_day_entries: "预警日进厂", last_seq: "最近记录", last_at: "最近时间", stage_basis: "阶段依据",
  registry_stage: "登记阶段", first_day: "首日", last_day: "末日", period: "统计期间", site: "站点", seed: "随机种子",
};
const title = (k) => TITLES[k] || k;

// Horizontal bars; labels on the left, values at the bar end.
export function barChart(pairs, opts = {}) {
  const data = pairs.filter(([, v]) => typeof v === "number" && isFinite(v));
  if (!data.length) return h("p", { class: "empty" }, "无数据");
  const row = 26, left = 120, width = 560, max = Math.max(...data.map(([, v]) => v), 1);
  const hgt = data.length * row + 10;
  return h(
    "svg:svg",
    { class: "chart", viewBox: `0 0 ${left + width + 70} ${hgt}`, width: "100%", role: "img", "aria-label": opts.label || "柱状图", testid: opts.testid || "bar-chart" },
    data.map(([label, v], i) => {
      const w = Math.max(1, (v / max) * width);
      const y = 5 + i * row;
      return h("svg:g", {},
        h("svg:text", { x: left - 8, y: y + 16, "text-anchor": "end", class: "chart-label" }, String(label)),
        h("svg:rect", { x: left, y: y + 3, width: w, height: row - 8, rx: 3, fill: opts.color || PALETTE[0] }),
        h("svg:text", { x: left + w + 6, y: y + 16, class: "chart-value" }, fmtNum(v, opts.percent)));
    }),
  );
}

export function pieChart(pairs, opts = {}) {
  const data = pairs.filter(([, v]) => typeof v === "number" && v > 0);
  const sum = data.reduce((a, [, v]) => a + v, 0);
  if (!sum) return h("p", { class: "empty" }, "无数据");
  const r = 80, cx = 90, cy = 90;
  let a0 = -Math.PI / 2;
  const slices = data.map(([label, v], i) => {
    const a1 = a0 + (v / sum) * 2 * Math.PI;
    const large = a1 - a0 > Math.PI ? 1 : 0;
    const p = (a) => `${(cx + r * Math.cos(a)).toFixed(2)} ${(cy + r * Math.sin(a)).toFixed(2)}`;
    const d = data.length === 1 ? `M ${cx - r} ${cy} a ${r} ${r} 0 1 0 ${2 * r} 0 a ${r} ${r} 0 1 0 ${-2 * r} 0` : `M ${cx} ${cy} L ${p(a0)} A ${r} ${r} 0 ${large} 1 ${p(a1)} Z`;
    a0 = a1;
    return h("svg:path", { d, fill: PALETTE[i % PALETTE.length] }, h("svg:title", {}, `${label}: ${v}`));
  });
  const legend = data.map(([label, v], i) =>
    h("svg:g", {},
      h("svg:rect", { x: 200, y: 10 + i * 22, width: 14, height: 14, fill: PALETTE[i % PALETTE.length] }),
      h("svg:text", { x: 220, y: 22 + i * 22, class: "chart-label" }, `${label}  ${fmtNum(v)}（${((v / sum) * 100).toFixed(1)}%）`)));
  return h("svg:svg", { class: "chart chart-pie", viewBox: `0 0 460 ${Math.max(185, data.length * 22 + 20)}`, width: "100%", role: "img", "aria-label": opts.label || "饼图", testid: "pie-chart" }, slices, legend);
}

// Vertical columns, one group per category, one colour per series: [[key, name]].
export function columnChart(rows, labelOf, series, opts = {}) {
  if (!rows.length) return h("p", { class: "empty" }, "无数据");
  const max = Math.max(1, ...rows.flatMap((r) => series.map(([k]) => Number(r[k]) || 0)));
  const hgt = 180, top = 24, bottom = 22, left = 36;
  const gw = Math.max(14, Math.min(60, 760 / rows.length));
  const bw = Math.max(3, (gw - 4) / series.length);
  const width = left + rows.length * gw + 10;
  const y = (v) => top + hgt - (v / max) * hgt;
  return h("svg:svg", { class: "chart", viewBox: `0 0 ${Math.max(width, 300)} ${top + hgt + bottom}`, width: Math.max(width, 300), role: "img", "aria-label": opts.label || "柱状图", testid: opts.testid || "column-chart" },
    h("svg:line", { x1: left, y1: top + hgt, x2: width, y2: top + hgt, stroke: "#94a3b8" }),
    h("svg:text", { x: left - 4, y: top + 4, "text-anchor": "end", class: "chart-value" }, fmtNum(max)),
    series.map(([, name], i) => h("svg:g", {},
      h("svg:rect", { x: left + i * 90, y: 4, width: 12, height: 12, fill: PALETTE[i % PALETTE.length] }),
      h("svg:text", { x: left + i * 90 + 16, y: 14, class: "chart-label" }, name))),
    rows.map((r, j) => h("svg:g", {},
      series.map(([k, name], i) => {
        const v = Number(r[k]) || 0;
        return h("svg:rect", { x: left + j * gw + 2 + i * bw, y: y(v), width: bw - 1, height: top + hgt - y(v), fill: PALETTE[i % PALETTE.length] },
          h("svg:title", {}, `${labelOf(r)} ${name}: ${v}`));
      }),
      rows.length <= 31 || j % 2 === 0 ? h("svg:text", { x: left + j * gw + gw / 2, y: top + hgt + 15, "text-anchor": "middle", class: "chart-value" }, labelOf(r)) : null)));
}

const gateName = (id) => (((session.site && session.site.gates) || []).find((g) => g.id === id) || { name: id }).name;
const pct = (v) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(1)}%`);
const sub = (title, ...c) => h("div", { class: "sub" }, h("h3", {}, title), ...c);
const cols = (spec) => spec.map(([t, f]) => [t, typeof f === "string" ? (r) => cell(f, r[f]) : f]);

// The summary report (src/report): each part drawn when present; anything else by shape.
function summaryReport(r) {
  if (!r || !r.passes) return auto("report", r);
  const known = ["from", "to", "first_day", "last_day", "days", "generated_at", "passes", "stage_mix", "fuel_mix", "transport_grade",
    "clean_transport", "fleet_shares", "daily", "manual_releases", "uploads"];
  const p = r.passes;
  const ct = r.clean_transport;
  const mix = (rows) =>
    h("div", { class: "pair" },
      pieChart(rows.map((m) => [m.label || m.code, m.trips]), { label: "按车次" }),
      pieChart(rows.map((m) => [m.label || m.code, m.vehicles]), { label: "按车辆数" }),
      table(cols([["类别", (m) => m.label || m.code], ["车次", "trips"], ["车次占比", (m) => pct(m.trip_share)], ["车辆数", "vehicles"], ["车辆占比", (m) => pct(m.vehicle_share)]]), rows));
  const rest = Object.entries(r).filter(([k]) => !known.includes(k));
  return h("div", { testid: "summary-report" },
    h("p", { class: "muted" }, `统计期间 ${r.first_day || fmtTime(r.from)} 至 ${r.last_day || fmtTime(r.to)}，共 ${r.days ?? "?"} 天；生成于 ${fmtTime(r.generated_at)}`),
    sub("通行概况",
      h("div", { class: "stats" }, [["通行合计", p.total], ["进厂", p.entries], ["出厂", p.exits], ["人工/遥控放行", p.manual_or_remote], ["拒绝（未抬杆）", p.denied_attempts]]
        .map(([t, v]) => h("div", { class: "stat" }, h("div", { class: "stat-value" }, v ?? "—"), h("div", { class: "stat-label" }, t)))),
      h("h4", {}, "按门岗"), columnChart(p.by_gate || [], (g) => gateName(g.gate), [["entries", "进厂"], ["exits", "出厂"]], { label: "按门岗" }),
      h("h4", {}, "按小时"), columnChart(p.by_hour || [], (x) => String(x.hour).padStart(2, "0"), [["entries", "进厂"], ["exits", "出厂"]], { label: "按小时" })),
    r.stage_mix ? sub("排放阶段构成（进厂车次 / 车辆）", mix(r.stage_mix)) : null,
    r.fuel_mix ? sub("燃料类型构成", mix(r.fuel_mix)) : null,
    r.transport_grade ? sub("运输车辆排放阶段（A/B 级）", auto("transport_grade", r.transport_grade, 1)) : null,
    ct ? sub("清洁运输比例",
      h("p", { class: "formula" }, ct.formula), h("p", { class: "formula" }, ct.formula_trips), h("p", { class: "muted" }, ct.definitions),
      ct.total ? h("div", { class: "stats" }, [["按运量", ct.total.ratio_tonnage], ["按运量（含国六）", ct.total.ratio_tonnage_incl_guo6], ["按车次", ct.total.ratio_trips], ["国六车次占比", ct.total.guo6_trip_share]]
        .map(([t, v]) => h("div", { class: "stat" }, h("div", { class: "stat-value", testid: "clean-ratio" }, pct(v)), h("div", { class: "stat-label" }, t)))) : null,
      (ct.by_cargo || []).length ? barChart(ct.by_cargo.map((c) => [c.cargo, c.ratio_tonnage ?? 0]), { label: "各货物清洁运输比例", percent: true }) : null,
      h("h4", {}, "计算输入（吨 / 车次）"), rowsTable([...(ct.total ? [ct.total] : []), ...(ct.by_cargo || [])], "clean-table"),
      (ct.other_modes || []).length ? [h("h4", {}, "铁路/水路/皮带/管道运量"), rowsTable(ct.other_modes)] : null) : null,
    (r.fleet_shares || []).length ? sub("厂内车辆与非道路机械排放阶段占比",
      table(cols([["类别", (f) => f.label || f.registry], ["要求", "rule"], ["总数", "total"], ["达标", "compliant"], ["占比", (f) => pct(f.share)],
        ["A级", (f) => (f.meets_a ? "达到" : "未达到")], ["B级", (f) => (f.meets_b ? "达到" : "未达到")], ["未达标", (f) => (f.non_compliant || []).join("、")], ["登记截至", (f) => fmtTime(f.as_of)]]), r.fleet_shares),
      h("div", { class: "pair" }, r.fleet_shares.map((f) => h("div", {}, h("h4", {}, f.label || f.registry), pieChart((f.by_stage || []).map((x) => [x.label || x.code, x.count]))))) ) : null,
    r.daily ? sub("日均车辆（常规日 / 预警日）",
      barChart([["常规日 日均车辆", r.daily.normal && r.daily.normal.avg_vehicles], ["预警日 日均车辆", r.daily.warning && r.daily.warning.avg_vehicles]].filter(([, v]) => typeof v === "number"), { label: "日均车辆" }),
      columnChart(r.daily.days || [], (d) => String(d.day).slice(5), [["entries", "进厂"], ["exits", "出厂"], ["vehicles", "车辆数"]], { label: "每日" }),
      rowsTable(r.daily.days || [])) : null,
    r.manual_releases ? sub(`人工放行（${r.manual_releases.total ?? 0} 次，无车牌 ${r.manual_releases.without_plate ?? 0} 次）`,
      h("div", { class: "pair" },
        h("div", {}, h("h4", {}, "按操作人"), barChart((r.manual_releases.by_operator || []).map((x) => [x.name, x.count]))),
        h("div", {}, h("h4", {}, "按原因"), barChart((r.manual_releases.by_reason || []).map((x) => [x.name, x.count]))))) : null,
    (r.uploads || []).length ? sub("数据上传完整率", barChart(r.uploads.map((u) => [u.platform, u.completeness]), { percent: true, label: "上传完整率" }), rowsTable(r.uploads)) : null,
    rest.map(([k, v]) => sub(title(k), auto(k, v, 1))));
}

function fmtNum(v, percent) {
  if (percent) return `${(v * 100).toFixed(1)}%`;
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

const isNumMap = (o) => o && typeof o === "object" && !Array.isArray(o) && Object.keys(o).length > 0 && Object.values(o).every((v) => typeof v === "number");
const isRows = (a) => Array.isArray(a) && a.length > 0 && a.every((x) => x && typeof x === "object" && !Array.isArray(x));

function labelOf(key, k) {
  if (key.includes("color")) return COLORS[k] || k;
  if (key.includes("stage")) return stageText(k);
  return TITLES[k] || k;
}

function cell(k, v) {
  if (v === null || v === undefined) return "";
  if (/photo/.test(k) && Array.isArray(v)) return h("span", { class: "thumbs" }, v.map((p) => photo(typeof p === "string" ? p : p.url, p.kind)));
  if (k === "at" || k.endsWith("_at") || k === "start" || k === "end") return fmtTime(v);
  if (k === "level") return { yellow: "黄色预警", orange: "橙色预警", red: "红色预警" }[v] || String(v);
  if (k === "plate") return String(v);
  if (k === "color") return COLORS[v] || v;
  if (k === "stage") return stageText(v);
  if (typeof v === "boolean") return v ? "是" : "否";
  if (typeof v === "number" && /completeness|ratio|share/.test(k) && v >= 0 && v <= 1) return fmtNum(v, true);
  if (Array.isArray(v) && v.every((x) => typeof x !== "object")) return v.join("、");
  if (typeof v === "number") return fmtNum(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function rowsTable(rows, testid) {
  const keys = [];
  for (const r of rows) for (const k of Object.keys(r)) if (!keys.includes(k)) keys.push(k);
  return table(keys.slice(0, 14).map((k) => [title(k), (r) => cell(k, r[k])]), rows, { testid });
}

// A value of unknown shape, rendered by what it is.
export function auto(key, v, depth = 0) {
  if (v === null || v === undefined) return null;
  if (isNumMap(v)) {
    const pairs = Object.entries(v).map(([k, n]) => [labelOf(key, k), n]);
    const mix = /mix|share|by_direction|stage|fuel/.test(key) && pairs.length <= 10;
    const percent = /ratio|share|completeness/.test(key) && pairs.every(([, n]) => n >= 0 && n <= 1);
    return h("div", { class: "chart-box", "data-key": key }, mix && !percent ? pieChart(pairs, { label: title(key) }) : barChart(pairs, { label: title(key), percent }));
  }
  if (isRows(v)) {
    // Rows with one label and one number also get a bar chart.
    const ks = Object.keys(v[0]);
    const num = ks.filter((k) => typeof v[0][k] === "number");
    const lab = ks.find((k) => typeof v[0][k] === "string");
    return h("div", { class: "rows-box", "data-key": key },
      lab && num.length >= 1 && v.length <= 40 ? barChart(v.map((r) => [labelOf(lab, r[lab]), r[num[0]]]), { label: title(key) }) : null,
      rowsTable(v));
  }
  if (Array.isArray(v)) return h("span", {}, v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join("、") || "无");
  if (typeof v === "object") {
    const simple = Object.entries(v).filter(([, x]) => x === null || typeof x !== "object");
    const nested = Object.entries(v).filter(([, x]) => x !== null && typeof x === "object");
    return h("div", { class: `auto depth-${depth}`, "data-key": key },
      simple.length ? h("dl", { class: "kv" }, simple.map(([k, x]) => [h("dt", {}, title(k)), h("dd", { "data-key": k }, cell(k, x))])) : null,
      nested.map(([k, x]) => h("div", { class: "sub" }, h(depth === 0 ? "h3" : "h4", {}, title(k)), auto(k, x, depth + 1))));
  }
  return h("span", {}, cell(key, v));
}

function range(state) {
  // A bare `to` date includes that whole day (docs/api.md).
  return { from: state.from, to: state.to };
}

export function reportsView(el) {
  const state = { from: siteDate(-6), to: siteDate(0) };
  const form = h("form", { class: "filters", testid: "report-form" },
    field("开始日期", h("input", { type: "date", name: "from", value: state.from, testid: "report-from" })),
    field("结束日期", h("input", { type: "date", name: "to", value: state.to, testid: "report-to" })),
    h("div", { class: "filter-buttons" },
      h("button", { class: "btn", type: "button", onclick: () => preset(0) }, "今日"),
      h("button", { class: "btn", type: "button", onclick: () => preset(-6) }, "近7天"),
      h("button", { class: "btn", type: "button", onclick: () => preset(-29) }, "近30天"),
      h("button", { class: "btn btn-primary", type: "submit", testid: "report-submit" }, "生成报表")));
  const links = h("div", { class: "downloads", id: "report-downloads" });
  const out = h("div", { id: "report", testid: "report" });
  const rel = h("div", { id: "release-report" });
  const tonnage = h("div", { id: "tonnage" });
  function preset(d) {
    form.from.value = siteDate(d);
    form.to.value = siteDate(0);
    form.requestSubmit();
  }
  const run = () => {
    const q = range(state);
    clear(links,
      h("a", { class: "btn", href: "/api/v1/reports/summary" + qs({ ...q, format: "csv" }), download: `report-${state.from}-${state.to}.csv`, testid: "report-csv" }, "下载 CSV"),
      h("a", { class: "btn", href: "/api/v1/reports/summary" + qs({ ...q, format: "xlsx" }), download: `report-${state.from}-${state.to}.xlsx`, testid: "report-xlsx" }, "下载 Excel"));
    loadInto(out, async () => {
      const r = await get("/api/v1/reports/summary" + qs({ ...q, format: "json" }));
      clear(out, summaryReport(r));
    });
    loadInto(rel, async () => clear(rel, releaseReport(await get("/api/v1/reports/releases" + qs(q)))));
    loadInto(tonnage, async () => {
      const t = await get("/api/v1/transport-tonnage" + qs(q));
      const rows = Array.isArray(t) ? t : t.items || [];
      clear(tonnage, rows.length ? rowsTable(rows, "tonnage-table") : h("p", { class: "empty" }, "本期未录入铁路/水路/管廊运量"),
        can("tonnage") ? h("button", { class: "btn", testid: "tonnage-add", onclick: addTonnage }, "录入运量") : null);
    });
  };
  const addTonnage = () =>
    dialog({
      title: "录入清洁运输运量",
      testid: "tonnage-form",
      build: () => [
        field("日期", h("input", { type: "date", name: "date", value: siteDate(0), required: true })),
        field("运输方式", select("mode", [["rail", "铁路"], ["water", "水路"], ["belt", "管状带式输送"], ["pipeline", "管道"]], "rail")),
        field("货物", input("cargo", { required: true })),
        field("吨数", h("input", { type: "number", name: "tonnes", min: "0", step: "0.001", required: true })),
        field("备注", input("note")),
      ],
      submit: async (f) => {
        const v = formValues(f);
        if (!v.cargo) throw new Error("请填写货物");
        const n = Number(v.tonnes);
        if (!v.tonnes || !isFinite(n) || n < 0) throw new Error("吨数须为非负数");
        const r = await post("/api/v1/transport-tonnage", { ...v, tonnes: n });
        toast("运量已录入", "ok");
        run();
        return r;
      },
    });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    if (v.from && v.to && v.from > v.to) {
      toast("开始日期不能晚于结束日期", "error");
      return;
    }
    Object.assign(state, v);
    run();
  });
  el.append(h("div", { class: "view-head" }, h("h1", {}, "统计报表")), section("统计期间", form, links), section("汇总", out),
    section("人工放行统计", rel), section("铁路/水路/管廊运量", tonnage));
  run();
}

const REL_STATUS = { pending: "待审批", approved: "已批准", rejected: "已驳回", executed: "已执行", expired: "已过期" };

// 人工放行统计: per guard, the daily exception report, and releases made without a request.
function releaseReport(r) {
  const guards = Object.entries(r.guards || {}).map(([guard, g]) => ({ guard, ...g }));
  const GS = [["门岗人员", "guard"], ["申请", "requested"], ["批准", "approved"], ["其中单人放行", "solo"], ["驳回", "rejected"], ["已执行", "executed"]];
  return h("div", { testid: "release-report" },
    h("h3", {}, "按门岗人员"),
    guards.length
      ? h("div", {}, barChart(guards.map((g) => [g.guard, g.requested || 0]), { label: "放行申请数" }),
          table(GS.map(([t, k]) => [t, (g) => (g[k] ?? "")]), guards, { testid: "guard-stats" }))
      : h("p", { class: "empty" }, "本期无放行申请"),
    h("h3", {}, "每日异常报告"),
    (r.days || []).length
      ? r.days.map((d) => h("div", { class: "sub" }, h("h4", {}, `${d.date}（${(d.requests || []).length} 起）`),
          table([
            ["时间", (x) => fmtTime(x.at)], ["车道", (x) => x.lane], ["车牌", (x) => plateBadge(x.plate, x.color)],
            ["原因", (x) => [x.reason_code, x.reason_text].filter(Boolean).join("：")], ["申请人", (x) => x.requested_by],
            ["审批人", (x) => x.approved_by || ""], ["状态", (x) => REL_STATUS[x.status] || x.status],
          ], d.requests || [])))
      : h("p", { class: "empty" }, "无"),
    h("h3", {}, "未经申请的人工/遥控放行"),
    table([
      ["时间", (e) => fmtTime(e.at)], ["车道", (e) => (e.body || {}).lane || ""], ["车牌", (e) => (e.body || {}).plate || "无"],
      ["方式", (e) => ({ manual: "手动抬杆", remote: "遥控抬杆", auto: "自动抬杆" })[(e.body || {}).mode] || ""],
      ["操作人", (e) => (e.body || {}).operator || ""], ["原因", (e) => (e.body || {}).reason || ""],
      ["详情", (e) => h("a", { href: `#/pass/${e.seq}`, class: "link" }, `#${e.seq}`)],
    ], r.releases_without_request || [], { empty: "无" }));
}

// ---- 核查 ----

function sampleCard(r) {
  const photos = r.photos || r.photo_urls || [];
  const facts = [
    ["方向", { in: "进厂", out: "出厂" }[r.direction] || ""],
    ["判定", r.kind === "manual_release" ? "人工放行" : ({ allow: "允许", deny: "拒绝" })[r.decision] || ""],
    ["原因", r.reason_text || r.reason || ""],
    ["抬杆", ({ auto: "自动抬杆", manual: "手动抬杆", remote: "遥控抬杆" })[r.barrier] || ""],
    ["排放阶段", stageText(r.stage)],
    ["燃料", r.fuel || ""],
    ["操作人", r.operator || ""],
    ["标记", [r.corrected ? "已更正" : "", r.voided ? "已作废" : ""].filter(Boolean).join("、")],
  ].filter(([, v]) => v);
  return h("div", { class: "sample", testid: "sample-row" },
    h("div", { class: "sample-head" }, plateBadge(r.plate, r.color), h("span", {}, fmtTime(r.at)), h("span", {}, laneName(r.lane)),
      r.seq ? h("a", { href: `#/pass/${r.seq}`, class: "link" }, `#${r.seq}`) : null),
    h("div", { class: "thumbs" }, photos.length ? photos.map((p) => photo(typeof p === "string" ? p : p.url, p.kind)) : h("span", { class: "muted" }, "无照片")),
    h("dl", { class: "kv kv-small" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

const RECHECK = {
  not_registered: "未登记（阶段来自平台或未知）", basis_missing: "缺少排放阶段依据", basis_weak: "阶段依据为手工/口述",
  stage_changed: "通行记录阶段不一致", stage_unknown: "通行记录阶段未知", low_stage_on_warning_day: "预警日国五及以下进厂",
};

const PASS_COLS = [
  ["时间", (r) => fmtTime(r.at)], ["车道", (r) => laneName(r.lane)], ["车牌", (r) => plateBadge(r.plate, r.color)],
  ["判定", (r) => (r.kind === "manual_release" ? "人工放行" : ({ allow: "允许", deny: "拒绝" })[r.decision] || "")],
  ["原因", (r) => r.reason_text || r.reason || ""], ["排放阶段", (r) => stageText(r.stage)],
  ["照片", (r) => h("span", { class: "thumbs" }, (r.photos || []).map((p) => photo(typeof p === "string" ? p : p.url, p.kind)))],
  ["记录", (r) => (r.seq ? h("a", { href: `#/pass/${r.seq}`, class: "link" }, `#${r.seq}`) : "")],
];

const num = (v) => (typeof v === "number" ? fmtNum(v) : "—");

function dayBlock(title, days, avg) {
  return h("div", {}, h("h4", {}, title),
    avg ? h("p", { testid: "day-average" }, `${avg.days ?? 0} 天：日均进厂 ${num(avg.avg_entries)}，日均出厂 ${num(avg.avg_exits)}，日均车辆 ${num(avg.avg_vehicles)}`) : null,
    (days || []).length ? rowsTable(days) : h("p", { class: "empty" }, "未选择"));
}

// 核查 (src/report/inspection): sample with photos, day averages, the window, the re-check list.
function inspectionReport(r, seedShown) {
  const sample = r.sample || r.samples || [];
  const known = ["from", "to", "generated_at", "seed", "population", "sample", "samples", "normal_days", "normal_average",
    "warning_days", "warning_average", "window", "recheck", "recheck_total"];
  return h("div", { testid: "inspection-report" },
    h("p", { class: "muted" }, `期间 ${fmtTime(r.from)} 至 ${fmtTime(r.to)}；总体 ${r.population ?? "?"} 条，随机种子 ${seedShown || r.seed || ""}（同一种子可重现抽样）；生成于 ${fmtTime(r.generated_at)}`),
    section(`随机抽样（${sample.length} 条）`, h("div", { class: "samples" }, sample.length ? sample.map(sampleCard) : h("p", { class: "empty" }, "本期无记录"))),
    section("日均车辆对比", h("div", { class: "pair" }, dayBlock("常规日", r.normal_days, r.normal_average), dayBlock("预警日", r.warning_days, r.warning_average))),
    r.window
      ? section(`时间窗内通行 ${fmtTime(r.window.from)} – ${fmtTime(r.window.to)}（${(r.window.passes || []).length} 条${r.window.truncated ? "，已截断" : ""}）`,
          table(PASS_COLS, r.window.passes || [], { testid: "window-table" }))
      : null,
    section(`排放阶段复核清单（${r.recheck_total ?? (r.recheck || []).length} 辆）`,
      table([
        ["车牌", (x) => plateBadge(x.plate, x.color)], ["原因", (x) => (x.reasons || []).map((c) => RECHECK[c] || c).join("；") || x.reason_text],
        ["登记阶段", (x) => stageText(x.registry_stage)], ["阶段依据", (x) => x.stage_basis || ""],
        ["通行记录阶段", (x) => (x.stages_seen || []).map(stageText).join("、")], ["进厂", "entries"], ["预警日进厂", "warning_day_entries"],
        ["最近", (x) => (x.last_seq ? h("a", { href: `#/pass/${x.last_seq}`, class: "link" }, fmtTime(x.last_at)) : "")],
      ].map(([t, f]) => [t, typeof f === "string" ? (x) => cell(f, x[f]) : f]), r.recheck || [], { testid: "recheck-table", empty: "无需复核" })),
    Object.entries(r).filter(([k]) => !known.includes(k)).map(([k, v]) => section(title(k), auto(k, v, 1))));
}

export function inspectionView(el) {
  const form = h("form", { class: "filters", testid: "inspection-form" },
    field("开始日期", h("input", { type: "date", name: "from", value: siteDate(-29) })),
    field("结束日期", h("input", { type: "date", name: "to", value: siteDate(0) })),
    field("抽样数量", h("input", { type: "number", name: "sample", value: "20", min: "1", max: "500" })),
    field("随机种子", input("seed", { placeholder: "留空则随机" })),
    field("常规日", input("normal_days", { placeholder: "2026-11-01,2026-11-02" })),
    field("预警日", input("warning_days", { placeholder: "2026-11-10,2026-11-11" })),
    field("时间窗开始", h("input", { type: "datetime-local", name: "window_from" })),
    field("时间窗结束", h("input", { type: "datetime-local", name: "window_to" })),
    h("div", { class: "filter-buttons" }, h("button", { class: "btn btn-primary", type: "submit", testid: "inspection-submit" }, "生成核查数据")));
  const links = h("div", { class: "downloads" });
  const out = h("div", { id: "inspection", testid: "inspection" });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    const dt = (s) => (s ? s.replace("T", " ") + (s.length === 16 ? ":00" : "") : "");
    // The console draws the seed when none is given: the server's own may exceed what a JS
    // number holds exactly, and the export must draw the very same sample.
    const seed = v.seed || String(Math.floor(Math.random() * 2 ** 52));
    const q = { ...v, seed, window_from: dt(v.window_from), window_to: dt(v.window_to) };
    clear(links);
    loadInto(out, async () => {
      const r = await get("/api/v1/inspection" + qs({ ...q, format: "json" }));
      const x = { ...q, format: "xlsx" };
      clear(links, h("a", { class: "btn btn-primary btn-big", href: "/api/v1/inspection" + qs(x), download: `inspection-${v.from}-${v.to}.xlsx`, testid: "inspection-xlsx" }, "一键导出 Excel"));
      clear(out, inspectionReport(r, q.seed));
    });
  });
  el.append(h("div", { class: "view-head" }, h("h1", {}, "核查模式"), h("span", { class: "hint" }, "随机抽样、日均对比、时间窗通行、排放阶段复核，一键导出")),
    section("核查参数", form, links), out);
}
