// 告警 (alarms, acknowledged by supervisors and up) and 设备 (device health, measures, uplinks).

import { h, clear, get, post, can, fmtTime, toast, dialog, field, input, formValues, table, section, loadInto } from "./core.js";
import { bus } from "./live.js";
import { rowsTable } from "./reports.js";

const SEVERITY = { critical: "严重", error: "错误", warning: "警告", warn: "警告", info: "提示" };

export function alarmsView(el) {
  const out = h("div", { id: "alarms" });
  const load = () =>
    loadInto(out, async () => {
      const rows = await get("/api/v1/alarms");
      clear(out, table(
        [
          ["时间", (a) => fmtTime(a.raised_at)],
          ["级别", (a) => h("span", { class: `sev sev-${a.severity}` }, SEVERITY[a.severity] || a.severity || "")],
          ["来源", (a) => a.source],
          ["代码", (a) => a.code],
          ["内容", (a) => a.message],
          ["确认", (a) => (a.acknowledged_by ? `${a.acknowledged_by} ${fmtTime(a.acknowledged_at)}` :
            can("ack") ? h("button", { class: "btn btn-small btn-primary", testid: `ack-${a.source}-${a.code}`, onclick: () => ack(a) }, "确认") : "未确认")],
        ],
        rows,
        { testid: "alarms-table", empty: "当前没有告警", rowClass: (a) => (a.acknowledged_by ? "" : "row-alarm") },
      ));
    });
  const ack = (a) =>
    dialog({
      title: `确认告警 · ${a.source} ${a.code}`,
      testid: "ack-form",
      submitText: "确认",
      build: () => [h("p", {}, a.message), field("处理说明", input("note", { maxlength: 200 }))],
      submit: async (f) => {
        const r = await post("/api/v1/alarms/ack", { source: a.source, code: a.code, note: formValues(f).note || "" });
        toast("告警已确认", "ok");
        load();
        return r ?? true;
      },
    });
  el.append(h("div", { class: "view-head" }, h("h1", {}, "告警")), section("当前告警", out));
  load();
  return bus.on("alarm", load);
}

export function devicesView(el) {
  const devs = h("div", { id: "devices" });
  const measures = h("div", { id: "measures" });
  const uplinks = h("div", { id: "uplinks" });
  const load = () => {
    loadInto(devs, async () => {
      const rows = await get("/api/v1/devices");
      clear(devs, h("div", { class: "device-grid", testid: "devices" }, rows.length ? rows.map((d) =>
        h("div", { class: `device ${d.online ? "device-on" : "device-off"}`, testid: `device-${d.name}` },
          h("div", { class: "device-name" }, d.name),
          h("div", {}, d.online ? "在线" : "离线"),
          h("small", {}, `${d.kind || ""} ${d.profile || ""}`),
          d.rtt_ms != null ? h("small", {}, `响应 ${Number(d.rtt_ms).toFixed(1)} ms`) : null,
          d.errors ? h("small", {}, `错误 ${d.errors} 次`) : null,
          d.last_error ? h("small", { class: "warn" }, d.last_error) : null)) : h("p", { class: "empty" }, "未配置设备")));
    });
    loadInto(measures, async () => {
      const m = await get("/api/v1/measures");
      const rows = Array.isArray(m) ? m : m.items || [m];
      clear(measures, rows.length ? rowsTable(rows, "measures-table") : h("p", { class: "empty" }, "当前无管控措施（常规日）"));
    });
    loadInto(uplinks, async () => {
      const u = await get("/api/v1/uplinks");
      const rows = Array.isArray(u) ? u : u.items || [];
      clear(uplinks, rows.length ? rowsTable(rows, "uplinks-table") : h("p", { class: "empty" }, "未配置上传平台"));
    });
  };
  el.append(h("div", { class: "view-head" }, h("h1", {}, "设备与上传"), h("button", { class: "btn", onclick: load }, "刷新")),
    section("设备状态", devs), section("管控措施", measures), section("平台上传", uplinks));
  load();
  const t = setInterval(load, 15000);
  return () => clearInterval(t);
}
