// 实时车道 (live lanes) with the manual-release and plate-correction forms, and 待审批
// (pending releases) for supervisors.

import {
  h, clear, get, post, session, can, fmtTime, plateBadge, decisionChip, COLORS, STATES, BARRIER,
  DIRECTION, RELEASE_STATUS, toast, showError, dialog, field, select, colorSelect, input, formValues,
  table, photo, section, loadInto, laneName,
} from "./core.js";

// One event bus fed by the shell's SSE connection.
export const bus = {
  subs: {},
  on(kind, f) {
    (this.subs[kind] ||= new Set()).add(f);
    return () => this.subs[kind].delete(f);
  },
  emit(kind, data) {
    for (const f of this.subs[kind] || []) {
      try {
        f(data);
      } catch (e) {
        console.warn(e);
      }
    }
  },
};

// Latest release per lane, so a tile can say its request is waiting.
const releasesByLane = new Map();
bus.on("release", (r) => {
  if (r && r.lane) releasesByLane.set(r.lane, r);
});

function laneTitle(v) {
  if (v.name) return v.name;
  const gate = session.site && (session.site.gates || []).find((g) => g.id === v.gate);
  return `${gate ? gate.name : v.gate || ""} ${v.lane}`.trim();
}

function allLanes() {
  const out = [];
  for (const g of (session.site && session.site.gates) || []) {
    for (const l of g.lanes || []) out.push([l.id, `${l.name || g.name + " " + (DIRECTION[l.direction] || "")}（${l.id}）`]);
  }
  return out;
}

function shown(v) {
  // The last recorded pass is what the guard acts on; the status plate is the vehicle being
  // decided right now (no record yet).
  const p = v.last_pass;
  const deciding = v.plate && (!p || v.plate !== p.plate) && v.state === "deciding";
  if (p && !deciding) {
    const manual = p.kind === "manual_release" || p.barrier === "manual" || p.barrier === "remote";
    return {
      plate: p.plate,
      color: p.color,
      decision: manual ? "manual" : p.decision,
      reasonText: p.reason_text || "",
      reason: p.reason || "",
      at: p.at,
      photo: (p.photos || []).find((x) => x.kind === "scene") || (p.photos || [])[0],
      barrier: p.barrier,
    };
  }
  const vd = v.verdict;
  return {
    plate: v.plate,
    color: v.color,
    decision: vd ? (vd.allow ? "allow" : "deny") : null,
    reasonText: vd ? vd.text : "",
    reason: vd ? vd.reason : "",
    at: v.updated,
    photo: null,
  };
}

function tile(v) {
  const s = shown(v);
  const denied = s.decision === "deny";
  const pending = releasesByLane.get(v.lane);
  const waiting = pending && pending.status === "pending";
  const decisionText = { allow: "允许通行", deny: "禁止通行", manual: "人工放行" }[s.decision] || "暂无车辆";
  return h(
    "article",
    {
      class: `tile ${denied ? "tile-denied" : ""} ${s.decision === "allow" ? "tile-allowed" : ""} ${s.decision === "manual" ? "tile-manual" : ""}`,
      id: `lane-${v.lane}`,
      testid: `lane-tile-${v.lane}`,
      "data-lane": v.lane,
      "data-decision": s.decision || "",
    },
    h(
      "header",
      { class: "tile-head" },
      h("span", { class: "tile-name" }, laneTitle(v)),
      h("span", { class: `dir dir-${v.direction}` }, DIRECTION[v.direction] || v.direction || ""),
      h("span", { class: `state state-${v.state}`, testid: "lane-state" }, STATES[v.state] || v.state || ""),
    ),
    h(
      "div",
      { class: "tile-body" },
      h(
        "div",
        { class: "tile-info" },
        h("div", { class: "tile-plate" }, s.plate || s.color ? plateBadge(s.plate, s.color, "lane-plate") : h("span", { class: "plate plate-none", testid: "lane-plate" }, "—")),
        h("div", { class: `verdict verdict-${s.decision || "none"}`, testid: "lane-decision", "data-decision": s.decision || "" }, decisionText),
        h("div", { class: "reason", testid: "lane-reason" }, s.reasonText || (s.reason ? s.reason : "")),
        h("div", { class: "tile-meta" },
          h("span", { class: `barrier ${v.barrier_open ? "barrier-open" : "barrier-closed"}`, testid: "lane-barrier", "data-open": v.barrier_open ? "1" : "0" },
            v.barrier_open ? "道闸：开" : "道闸：关"),
          h("span", { class: "time" }, fmtTime(s.at)),
        ),
        waiting ? h("div", { class: "waiting", testid: "lane-waiting" }, `放行申请待审批（${pending.plate}）`) : null,
        v.record_failures ? h("div", { class: "warn" }, `记录失败 ${v.record_failures} 次`) : null,
      ),
      h("div", { class: "tile-photo" }, s.photo ? photo(s.photo.url, "车辆照片", "lane-photo") : h("div", { class: "photo photo-none" }, "无照片")),
    ),
    can("release") || can("correct")
      ? h(
          "footer",
          { class: "tile-actions" },
          can("release")
            ? h("button", { class: "btn btn-warn btn-big", testid: "btn-release", onclick: () => releaseForm(v, s) }, "人工放行")
            : null,
          can("correct")
            ? h("button", { class: "btn btn-big", testid: "btn-correct", disabled: !s.plate, onclick: () => correctForm(v, s) }, "车牌纠正")
            : null,
        )
      : null,
  );
}

export function releaseForm(v, s) {
  const reasons = (session.site && session.site.release_reasons) || [];
  return dialog({
    title: "人工放行申请",
    testid: "release-form",
    build: () => [
      field("车道", select("lane", allLanes().length ? allLanes() : [[v.lane, v.lane]], v.lane, { testid: "release-lane" })),
      field("车牌号码", input("plate", { value: (s && s.plate) || "", testid: "release-plate", required: true, maxlength: 12 }), "识别有误时直接改正"),
      field("车牌颜色", colorSelect("color", s && s.color, { testid: "release-color" })),
      field(
        "放行原因",
        select("reason_code", [["", "请选择…"], ...reasons.map((r) => [r.code, r.solo ? `${r.label}（门岗可直接放行）` : r.label])], "", { testid: "release-reason", required: true }),
      ),
      field("情况说明", h("textarea", { name: "reason_text", rows: 3, testid: "release-text", maxlength: 200 })),
    ],
    submit: async (form) => {
      const f = formValues(form);
      if (!f.plate) throw new Error("请填写车牌号码");
      if (!f.reason_code) throw new Error("请选择放行原因");
      const r = await post("/api/v1/releases", f);
      releasesByLane.set(r.lane, r);
      toast(
        r.status === "pending" ? `放行申请已提交（${r.plate}），等待主管审批` : `已放行 ${r.plate}（${RELEASE_STATUS[r.status] || r.status}）`,
        "ok",
      );
      bus.emit("release", r);
      return r;
    },
  });
}

function correctForm(v, s) {
  return dialog({
    title: `车牌纠正 · ${laneTitle(v)}`,
    testid: "correct-form",
    build: () => [
      h("p", { class: "hint" }, `识别结果：${s.plate || "无"}（${COLORS[s.color] || ""}）。纠正后将按正确车牌重新判定。`),
      field("正确车牌", input("plate", { value: s.plate || "", testid: "correct-plate", required: true, maxlength: 12 })),
      field("车牌颜色", colorSelect("color", s.color, { testid: "correct-color" })),
      field("备注", input("note", { testid: "correct-note", maxlength: 200 })),
    ],
    submit: async (form) => {
      const f = formValues(form);
      if (!f.plate) throw new Error("请填写正确车牌");
      const r = await post(`/api/v1/lanes/${encodeURIComponent(v.lane)}/correct-plate`, f);
      toast(`已纠正为 ${f.plate}，重新判定中`, "ok");
      return r;
    },
  });
}

export function liveView(el) {
  const grid = h("div", { class: "tiles", id: "lanes", testid: "lanes" });
  const lanes = new Map();
  const draw = (v) => {
    lanes.set(v.lane, v);
    const old = document.getElementById(`lane-${v.lane}`);
    const t = tile(v);
    if (old && old.parentNode === grid) grid.replaceChild(t, old);
    else grid.appendChild(t);
  };
  const load = () =>
    loadInto(grid, async () => {
      const all = await get("/api/v1/lanes");
      clear(grid);
      if (!all.length) grid.appendChild(h("p", { class: "empty" }, "本站未配置车道"));
      for (const v of all) draw(v);
      grid.setAttribute("data-loaded", "1");
    });
  el.append(h("div", { class: "view-head" }, h("h1", {}, "实时车道"), h("span", { class: "hint" }, "车道状态实时更新；红色为禁止通行车辆")), grid);
  load();
  const offs = [
    bus.on("lane", (v) => {
      if (grid.getAttribute("data-loaded")) draw({ ...(lanes.get(v.lane) || {}), ...v });
    }),
    bus.on("release", (r) => {
      const v = lanes.get(r.lane);
      if (v) draw(v);
    }),
    bus.on("reconnect", load),
  ];
  return () => offs.forEach((f) => f());
}

export function pendingView(el) {
  const list = h("div", { id: "pending-list" });
  const recent = h("div", { id: "recent-releases" });
  const load = () => {
    loadInto(list, async () => {
      const rows = await get("/api/v1/releases?status=pending");
      clear(
        list,
        table(
          [
            ["申请时间", (r) => fmtTime(r.requested_at)],
            ["车道", (r) => laneName(r.lane)],
            ["车牌", (r) => plateBadge(r.plate, r.color)],
            ["原因", (r) => reasonLabel(r.reason_code)],
            ["说明", (r) => r.reason_text || ""],
            ["申请人", (r) => r.requested_by],
            [
              "操作",
              (r) =>
                can("approve") && r.requested_by !== session.user.username
                  ? h("span", { class: "actions" },
                      h("button", { class: "btn btn-primary", testid: `approve-${r.id}`, "data-action": "approve", onclick: () => decide(r, "approve") }, "批准放行"),
                      h("button", { class: "btn btn-danger", testid: `reject-${r.id}`, "data-action": "reject", onclick: () => decide(r, "reject") }, "驳回"))
                  : h("span", { class: "muted" }, can("approve") ? "本人申请，需其他主管审批" : "等待主管审批"),
            ],
          ],
          rows,
          { testid: "pending-table", empty: "没有待审批的放行申请" },
        ),
      );
    });
    loadInto(recent, async () => {
      const rows = await get("/api/v1/releases");
      clear(
        recent,
        table(
          [
            ["申请时间", (r) => fmtTime(r.requested_at)],
            ["车道", (r) => laneName(r.lane)],
            ["车牌", (r) => plateBadge(r.plate, r.color)],
            ["原因", (r) => reasonLabel(r.reason_code)],
            ["申请人", (r) => r.requested_by],
            ["审批人", (r) => r.approved_by || ""],
            ["状态", (r) => h("span", { class: `status status-${r.status}` }, RELEASE_STATUS[r.status] || r.status)],
          ],
          rows.slice(0, 50),
          { testid: "releases-table" },
        ),
      );
    });
  };
  async function decide(r, action) {
    const text = action === "approve" ? "批准放行" : "驳回";
    await dialog({
      title: `${text} · ${r.plate}`,
      testid: `${action}-form`,
      submitText: text,
      build: () => [
        h("p", {}, `${r.lane} 车道，${r.requested_by} 申请：${reasonLabel(r.reason_code)} ${r.reason_text || ""}`),
        field("审批意见", input("note", { testid: "decision-note", maxlength: 200 })),
      ],
      submit: async (form) => {
        const res = await post(`/api/v1/releases/${encodeURIComponent(r.id)}/${action}`, formValues(form));
        toast(action === "approve" ? `已批准，${r.plate} 放行` : `已驳回 ${r.plate} 的放行申请`, "ok");
        return res;
      },
    });
    load();
  }
  el.append(
    h("div", { class: "view-head" }, h("h1", {}, "待审批放行")),
    section("待审批", list),
    section("最近放行申请", recent),
  );
  load();
  const off = bus.on("release", load);
  return off;
}

export function reasonLabel(code) {
  const r = ((session.site && session.site.release_reasons) || []).find((x) => x.code === code);
  return r ? r.label : code || "";
}

export { showError, BARRIER };
