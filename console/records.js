// 查询 (pass search and detail), 台账 (visits, vehicles in the plant) and 登记 (registries).

import {
  h, clear, get, post, api, session, can, qs, fmtTime, plateBadge, decisionChip, COLORS, BARRIER,
  DIRECTION, toast, dialog, field, select, colorSelect, input, formValues, table, pager, photo,
  section, loadInto, siteDate, laneName,
} from "./core.js";

// `datetime-local` value → the API's `yyyy-MM-dd HH:mm:ss` (site time).
export function apiTime(v) {
  if (!v) return "";
  const s = v.replace("T", " ");
  return s.length === 16 ? s + ":00" : s;
}

function gateOptions() {
  return [["", "全部"], ...((session.site && session.site.gates) || []).map((g) => [g.id, g.name])];
}

function laneOptions() {
  const out = [["", "全部"]];
  for (const g of (session.site && session.site.gates) || []) for (const l of g.lanes || []) out.push([l.id, l.name || `${g.name} ${l.id}`]);
  return out;
}

const STAGES = [["", "全部"], ...[0, 1, 2, 3, 4, 5, 6].map((n) => [String(n), stageText(String(n))]), ["D", "电动"], ["X", "未知"]];

export function stageText(s) {
  if (s === null || s === undefined || s === "") return "";
  const m = { D: "电动", X: "未知" };
  if (m[s]) return m[s];
  const n = Number(s);
  return Number.isInteger(n) ? `国${"零一二三四五六七"[n] || n}` : String(s);
}

// The last search survives a visit to a pass's detail page.
const searchState = { filters: { from: `${siteDate(0)}T00:00`, to: "" }, page: 1, per_page: 50 };

export function searchView(el) {
  const f = searchState.filters;
  const form = h(
    "form",
    { class: "filters", id: "search-form", testid: "search-form" },
    field("车牌", input("plate", { value: f.plate || "", testid: "search-plate", placeholder: "可输入部分车牌" })),
    field("颜色", colorSelect("color", f.color, {}, true)),
    field("门岗", select("gate", gateOptions(), f.gate)),
    field("车道", select("lane", laneOptions(), f.lane)),
    field("方向", select("direction", [["", "全部"], ["in", "进厂"], ["out", "出厂"]], f.direction)),
    field("排放阶段", select("stage", STAGES, f.stage)),
    field("判定", select("decision", [["", "全部"], ["allow", "允许"], ["deny", "拒绝"]], f.decision, { testid: "search-decision" })),
    field("抬杆方式", select("barrier", [["", "全部"], ...Object.entries(BARRIER)], f.barrier)),
    field("开始时间", h("input", { type: "datetime-local", name: "from", value: f.from || "" })),
    field("结束时间", h("input", { type: "datetime-local", name: "to", value: f.to || "" })),
    h("div", { class: "filter-buttons" },
      h("button", { type: "submit", class: "btn btn-primary", testid: "search-submit" }, "查询"),
      h("button", { type: "button", class: "btn", onclick: () => { searchState.filters = {}; searchState.page = 1; el.replaceChildren(); searchView(el); } }, "重置")),
  );
  const out = h("div", { id: "search-results" });
  const run = () =>
    loadInto(out, async () => {
      // The field promises part of a plate: the guard types what the camera may have misread
      // around. A plate ending in `*` keeps the API's prefix form.
      const f = searchState.filters;
      const plateMatch = f.plate && !f.plate.endsWith("*") ? "contains" : "";
      const q = { ...f, plate_match: plateMatch, from: apiTime(f.from), to: apiTime(f.to), page: searchState.page, per_page: searchState.per_page };
      const res = await get("/api/v1/passes" + qs(q));
      clear(
        out,
        table(
          [
            ["时间", (r) => fmtTime(r.at)],
            ["车道", (r) => laneName(r.lane)],
            ["方向", (r) => DIRECTION[r.direction] || r.direction || ""],
            ["车牌", (r) => plateBadge(r.plate, r.color)],
            ["判定", (r) => (r.kind === "manual_release" ? h("span", { class: "chip chip-manual" }, "人工放行") : decisionChip(r.decision))],
            ["原因", (r) => r.reason_text || r.reason || ""],
            ["抬杆", (r) => BARRIER[r.barrier] || r.barrier || ""],
            ["排放阶段", (r) => stageText(r.stage)],
            ["照片", (r) => ((r.photos || []).length ? `${r.photos.length} 张` : "")],
          ],
          res.items || [],
          { testid: "search-table", onRow: (r) => (location.hash = `#/pass/${r.seq}`), rowClass: (r) => `clickable ${r.decision === "deny" ? "row-deny" : ""}` },
        ),
        pager(res.total, res.page || searchState.page, res.per_page || searchState.per_page, (p) => {
          searchState.page = p;
          run();
        }),
      );
    });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    searchState.filters = formValues(form);
    searchState.page = 1;
    run();
  });
  el.append(h("div", { class: "view-head" }, h("h1", {}, "通行记录查询")), section("查询条件", form), section("结果", out));
  run();
}

const KIND = {
  pass_attempt: "通行记录",
  manual_release: "人工放行",
  release_request: "放行申请",
  release_decision: "放行审批",
  correction: "更正",
  weighing: "称重",
  alarm: "告警",
  registry_change: "登记变更",
  barrier_exception: "异常抬杆",
  backfill: "补录",
};

const LABELS = {
  lane: "车道", gate: "门岗", direction: "方向", plate: "车牌", color: "颜色", decision: "判定",
  reason: "原因代码", reason_text: "原因", barrier: "抬杆方式", opened: "已抬杆", stage: "排放阶段",
  fuel: "燃料", registry: "登记类别", mode: "方式", operator: "操作人", role: "角色", approval: "审批人",
  gross: "毛重", tare: "皮重", net: "净重", cargo: "货物", note: "备注", status: "状态",
  requested_by: "申请人", approved_by: "审批人", reason_code: "原因", refs: "更正对象", scale: "地磅",
  read_id: "识别编号", request: "放行申请", pass_ref: "关联通行", by: "审批人", approved: "批准",
  source: "来源", code: "代码", message: "内容", active: "告警中", void: "作废", op: "操作", key: "主键",
  record: "记录", measure: "管控措施", level: "级别", photos: "照片",
};

// Fields in the order a person reads a record; the rest follow alphabetically.
const ORDER = ["lane", "gate", "direction", "plate", "color", "decision", "reason_text", "reason", "reason_code",
  "barrier", "mode", "opened", "operator", "role", "requested_by", "approval", "by", "approved", "note", "stage", "fuel",
  "registry", "cargo", "gross", "tare", "net"];
const rank = (k) => (ORDER.includes(k) ? ORDER.indexOf(k) : ORDER.length);
const REGISTRY = { transport: "进出厂运输车辆", in_plant: "厂内运输车辆", non_road: "非道路移动机械" };

function valueText(k, v) {
  if (v === null || v === undefined) return "";
  if (k === "color") return COLORS[v] || v;
  if (k === "lane") return laneName(v);
  if (k === "gate") {
    const g = ((session.site && session.site.gates) || []).find((x) => x.id === v);
    return g ? g.name : String(v);
  }
  if (k === "fuel") return (FUELS.find(([c]) => c === v) || [v, v])[1];
  if (k === "registry") return REGISTRY[v] || v;
  if (k === "direction") return DIRECTION[v] || v;
  if (k === "barrier" || k === "mode") return BARRIER[v] || v;
  if (k === "decision") return { allow: "允许", deny: "拒绝", approved: "批准", rejected: "驳回" }[v] || v;
  if (k === "stage") return stageText(v);
  if (typeof v === "boolean") return v ? "是" : "否";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function kv(obj, skip = []) {
  return h(
    "dl",
    { class: "kv" },
    Object.entries(obj || {})
      .sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : 1))
      .filter(([k, v]) => !skip.includes(k) && v !== null && v !== undefined && v !== "" && !(Array.isArray(v) && !v.length))
      .map(([k, v]) => [h("dt", {}, LABELS[k] || k), h("dd", { "data-key": k }, valueText(k, v))]),
  );
}

function eventBlock(e) {
  const body = e.body || {};
  return h(
    "div",
    { class: "event", testid: `event-${e.kind}` },
    h("h3", {}, `${KIND[e.kind] || e.kind} · #${e.seq} · ${fmtTime(e.occurred_at || e.at)}`),
    kv(body, ["kind", "photo_kinds", "photos", "seq", "id", "at"]),
  );
}

const AMENDABLE = ["pass_attempt", "manual_release", "backfill", "weighing"];

// 更正: a correction event naming the record (POST /api/v1/corrections); empty fields stay as
// they were. Plate colour and direction belong to the pass, so a weighing offers cargo and net.
function amendForm(e) {
  const weighing = e.kind === "weighing";
  return dialog({
    title: `更正${KIND[e.kind] || ""} #${e.seq}`,
    testid: "amend-form",
    build: () => [
      h("p", { class: "hint" }, "留空的项保持不变；作废后该记录不再计入台账和报表（原记录保留）。"),
      weighing ? null : field("车牌", input("plate", { testid: "amend-plate", maxlength: 16 })),
      weighing ? null : field("车牌颜色", select("color", [["", "不变"], ...Object.entries(COLORS)], "", { testid: "amend-color" })),
      weighing ? null : field("方向", select("direction", [["", "不变"], ["in", "进厂"], ["out", "出厂"]], "", { testid: "amend-direction" })),
      field("货物", input("cargo", { testid: "amend-cargo", maxlength: 64 })),
      field("净重 (kg)", input("net_kg", { testid: "amend-net", inputmode: "decimal" })),
      h("label", { class: "field field-check" }, h("input", { type: "checkbox", name: "void", value: "1", testid: "amend-void" }), " 作废此记录"),
      field("更正原因", input("reason", { testid: "amend-reason", required: true, maxlength: 200 })),
    ].filter(Boolean),
    submit: async (form) => {
      const f = formValues(form);
      if (!f.reason) throw new Error("请填写更正原因");
      const body = { refs: e.id, reason: f.reason, void: f.void === "1" };
      for (const k of ["plate", "color", "direction", "cargo", "net_kg"]) if (f[k]) body[k] = f[k];
      const r = await post("/api/v1/corrections", body);
      toast(body.void ? "记录已作废" : "更正已记录", "ok");
      return r;
    },
  });
}

function amendButton(e, reload) {
  if (!can("amend") || !AMENDABLE.includes(e.kind)) return null;
  return h("button", {
    class: "btn", type: "button", testid: `amend-${e.kind}`,
    onclick: async () => { if (await amendForm(e)) reload(); },
  }, "更正");
}

export function passView(el, [seq]) {
  const box = h("div", { id: "pass-detail", testid: "pass-detail" });
  el.append(
    h("div", { class: "view-head" }, h("a", { href: "#/search", class: "btn" }, "← 返回查询"), h("h1", {}, `通行详情 #${seq}`)),
    box,
  );
  const load = () => loadInto(box, async () => {
    const d = await get(`/api/v1/passes/${encodeURIComponent(seq)}`);
    const withAmend = (e) => {
      const b = eventBlock(e);
      const btn = amendButton(e, load);
      if (btn) b.appendChild(btn);
      return b;
    };
    clear(
      box,
      section("记录", withAmend(d.event)),
      section(
        "照片",
        h("div", { class: "photos" },
          (d.photos || []).length
            ? d.photos.map((p) => h("figure", {}, photo(p.url, p.kind), h("figcaption", {}, `${{ scene: "场景", plate: "车牌", head: "车头", body: "车身" }[p.kind] || p.kind || ""}`)))
            : h("p", { class: "empty" }, "无照片")),
      ),
      section("关联记录", (d.related || []).length ? d.related.map(withAmend) : h("p", { class: "empty" }, "无")),
      h("p", { class: "muted" }, `事件编号 ${d.event.id || ""}`),
    );
  });
  load();
}

// ---- 台账 ----

function passCell(p) {
  if (!p) return "";
  return h("span", {}, fmtTime(p.at), p.lane ? ` · ${laneName(p.lane)}` : "", p.seq ? h("a", { href: `#/pass/${p.seq}`, class: "link" }, " 详情") : null);
}

function flagsCell(flags) {
  const FL = { unmatched_exit: "无进厂记录", no_exit: "无出厂记录", in_plant: "在厂", unplated: "无牌", manual: "手工放行", backfill: "补录", corrected: "已更正" };
  return (flags || []).map((f) => h("span", { class: `chip chip-flag` }, FL[f] || f));
}

export function visitsView(el) {
  const state = { from: siteDate(-1), to: siteDate(0), plate: "", page: 1, per_page: 50 };
  const form = h(
    "form",
    { class: "filters", testid: "visits-form" },
    field("开始日期", h("input", { type: "date", name: "from", value: state.from })),
    field("结束日期", h("input", { type: "date", name: "to", value: state.to })),
    field("车牌", input("plate")),
    h("div", { class: "filter-buttons" }, h("button", { class: "btn btn-primary", type: "submit" }, "查询")),
  );
  const visits = h("div", { id: "visits" });
  const inPlant = h("div", { id: "in-plant" });
  const run = () =>
    loadInto(visits, async () => {
      // A bare `to` date includes that whole day.
      const res = await get("/api/v1/visits" + qs({ from: state.from, to: state.to, plate: state.plate, page: state.page, per_page: state.per_page }));
      const items = Array.isArray(res) ? res : res.items || [];
      clear(
        visits,
        table(
          [
            ["车牌", (v) => plateBadge(v.plate, v.color)],
            ["进厂", (v) => passCell(v.entry)],
            ["出厂", (v) => passCell(v.exit)],
            ["货物", (v) => (v.cargo || []).join("、")],
            ["净重(kg)", (v) => (v.net_kg != null ? String(v.net_kg) : "")],
            ["标记", (v) => flagsCell(v.flags)],
          ],
          items,
          { testid: "visits-table" },
        ),
        Array.isArray(res) ? null : pager(res.total, res.page || state.page, res.per_page || state.per_page, (p) => { state.page = p; run(); }),
      );
    });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    Object.assign(state, formValues(form), { page: 1 });
    run();
  });
  el.append(h("div", { class: "view-head" }, h("h1", {}, "进出厂台账")), section("在厂车辆", inPlant), section("查询条件", form), section("进出记录", visits));
  loadInto(inPlant, async () => {
    const res = await get("/api/v1/in-plant");
    const items = Array.isArray(res) ? res : res.items || [];
    clear(
      inPlant,
      h("p", { class: "big-number", testid: "in-plant-count" }, `当前在厂 ${items.length} 辆`),
      table(
        [
          ["车牌", (v) => plateBadge(v.plate, v.color)],
          ["进厂时间", (v) => fmtTime(v.at || (v.entry && v.entry.at) || v.entered_at)],
          ["车道", (v) => laneName(v.lane || (v.entry && v.entry.lane) || "")],
          ["排放阶段", (v) => stageText(v.stage || (v.entry && v.entry.stage))],
        ],
        items.slice(0, 200),
        { empty: "当前无在厂车辆" },
      ),
      items.length > 200 ? h("p", { class: "muted" }, `仅列出前 200 辆，可按车牌在下方台账中查询`) : null,
    );
  });
  run();
}

// ---- 登记 ----

// Columns as in the CSV import (src/ledger/registry.rs): [name, 中文, required].
const REG = {
  transport: {
    title: "进出厂运输车辆",
    key: ["plate", "color"],
    fields: [
      ["plate", "车牌号码", true], ["color", "车牌颜色", true], ["vin", "车辆识别代号", true], ["engine_no", "发动机号码", true],
      ["vehicle_type", "车辆类型", true], ["use_character", "使用性质", false], ["fuel", "燃料类型", true], ["stage", "排放阶段", true],
      ["stage_basis", "排放阶段依据", false], ["registered_on", "注册日期", true], ["fleet", "车队名称", true], ["brand_model", "品牌型号", false],
      ["obd_online", "联网状态", false],
    ],
    list: ["plate", "color", "fleet", "fuel", "stage", "vehicle_type", "registered_on"],
  },
  in_plant: {
    title: "厂内运输车辆",
    key: ["code"],
    fields: [
      ["code", "登记编码", true], ["plate", "车牌号码", false], ["color", "车牌颜色", false], ["vin", "车辆识别代号", true],
      ["engine_no", "发动机号码", false], ["vehicle_type", "车辆类型", false], ["fuel", "燃料类型", true], ["stage", "排放阶段", true],
      ["registered_on", "注册日期", false], ["brand_model", "品牌型号", false], ["owner", "所有人", false],
    ],
    list: ["code", "plate", "fuel", "stage", "owner"],
  },
  machinery: {
    title: "非道路移动机械",
    key: ["reg_code"],
    fields: [
      ["reg_code", "环保登记编码", true], ["pin", "产品识别码", false], ["machine_code", "机械环保代码", false], ["machine_kind", "机械种类", false],
      ["model", "机械型号", true], ["fuel", "燃料类型", true], ["stage", "排放阶段", true], ["produced_on", "生产日期", false],
      ["engine_model", "发动机型号", false], ["engine_no", "发动机编号", false], ["engine_maker", "发动机生产厂", false],
      ["engine_power_kw", "发动机功率(kW)", false], ["owner", "所有人", false], ["plate", "车牌号码", false],
    ],
    list: ["reg_code", "model", "machine_kind", "fuel", "stage", "owner"],
  },
};

const FUELS = [["A", "汽油"], ["B", "柴油"], ["C", "电"], ["D", "混合油"], ["E", "天然气"], ["F", "液化石油气"], ["L", "甲醇"], ["M", "乙醇"], ["N", "太阳能"], ["O", "混合动力"], ["Y", "无"], ["Z", "其他"]];

function regKey(kind, r) {
  if (r.key) return r.key;
  // The API takes the key columns separated by a space (plate and colour for transport).
  return REG[kind].key.map((k) => r[k]).join(" ");
}

function regField(kind, [name, label, required], rec, editing) {
  const v = rec ? rec[name] : "";
  const locked = editing && REG[kind].key.includes(name);
  let el;
  if (name === "color") el = colorSelect(name, v, { disabled: locked }, !required);
  else if (name === "fuel") el = select(name, FUELS.map(([c, t]) => [c, `${c} ${t}`]), v);
  else if (name === "obd_online") el = select(name, [["", "未知"], ["1", "已联网"], ["0", "未联网"]], v === true ? "1" : v === false ? "0" : v);
  else if (name.endsWith("_on")) el = h("input", { type: "date", name, value: v || "" });
  else el = input(name, { value: v == null ? "" : String(v), readonly: locked, required });
  return field(required ? `${label} *` : label, el);
}

export function registriesView(el, [kindArg]) {
  const kind = REG[kindArg] ? kindArg : "transport";
  const spec = REG[kind];
  const state = { q: "", page: 1, per_page: 50 };
  const out = h("div", { id: "registry-list" });
  const tabs = h("div", { class: "tabs" }, Object.entries(REG).map(([k, s]) => h("a", { href: `#/registries/${k}`, class: `tab ${k === kind ? "active" : ""}`, testid: `reg-tab-${k}` }, s.title)));
  const search = h("form", { class: "filters" },
    field("搜索", input("q", { placeholder: "车牌 / 编码 / 车队" })),
    h("div", { class: "filter-buttons" }, h("button", { class: "btn btn-primary", type: "submit" }, "查询"),
      can("registry") ? h("button", { type: "button", class: "btn", testid: "reg-add", onclick: () => edit(null) }, "新增") : null));
  const run = () =>
    loadInto(out, async () => {
      const res = await get(`/api/v1/registries/${kind}` + qs(state));
      const items = Array.isArray(res) ? res : res.items || [];
      const cols = spec.list.map((k) => [spec.fields.find((f) => f[0] === k)[1], (r) => (k === "color" ? COLORS[r[k]] || r[k] || "" : k === "stage" ? stageText(r[k]) : r[k] == null ? "" : String(r[k]))]);
      if (can("registry")) {
        cols.push(["操作", (r) => h("span", { class: "actions" },
          h("button", { class: "btn btn-small", onclick: (ev) => { ev.stopPropagation(); edit(r); } }, "编辑"),
          h("button", { class: "btn btn-small btn-danger", onclick: (ev) => { ev.stopPropagation(); remove(r); } }, "删除"))]);
      }
      clear(out, table(cols, items, { testid: "registry-table" }),
        Array.isArray(res) ? null : pager(res.total, res.page || state.page, res.per_page || state.per_page, (p) => { state.page = p; run(); }));
    });
  const edit = (rec) =>
    dialog({
      title: `${rec ? "编辑" : "新增"}${spec.title}`,
      testid: "registry-form",
      submitText: "保存",
      build: () => h("div", { class: "form-grid" }, spec.fields.map((f) => regField(kind, f, rec, !!rec))),
      submit: async (form) => {
        const v = formValues(form);
        if (rec) for (const k of spec.key) if (rec[k] !== undefined) v[k] = rec[k];
        for (const [k, label, req] of spec.fields) if (req && !v[k]) throw new Error(`请填写${label}`);
        for (const k of Object.keys(v)) if (v[k] === "") delete v[k];
        const res = await post(`/api/v1/registries/${kind}`, v);
        toast("已保存，登记变更已写入台账", "ok");
        run();
        return res;
      },
    });
  const remove = (rec) =>
    dialog({
      title: `删除${spec.title}`,
      submitText: "确认删除",
      build: () => h("p", {}, `确认删除 ${regKey(kind, rec)}？删除记录将写入台账。`),
      submit: async () => {
        await api("DELETE", `/api/v1/registries/${kind}/${encodeURIComponent(regKey(kind, rec))}`);
        toast("已删除", "ok");
        run();
        return true;
      },
    });
  search.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.q = formValues(search).q;
    state.page = 1;
    run();
  });
  el.append(h("div", { class: "view-head" }, h("h1", {}, "登记管理")), tabs, section(spec.title, search, out));
  run();
}

export { post };
