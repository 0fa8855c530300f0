//! Property tests for the parsers that take camera input: VZ `parse_push`, Hikvision
//! `parse_alert` and the multipart split of its pushes, the profile-described JSON camera's
//! `parse`, and the Digest challenge/authorization parsers. Arbitrary input never panics; valid
//! generated input round-trips its fields.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ecogate_drivers::camera::digest::{authorization, parse_challenge, verify, Challenge};
use ecogate_drivers::camera::generic::{self, ImagePath, JsonSettings};
use ecogate_drivers::camera::hik::{self, color_from_name, parse_alert};
use ecogate_drivers::camera::vz::{color_from_code, parse_push, VzMessage};
use ecogate_drivers::event::ImageKind;
use ecogate_drivers::plate::PlateColor;
use ecogate_drivers::sim::camera::{
    fake_jpeg, hik_anpr_xml, json_push_body, multipart_body, vz_plate_json, JsonPlate, VzPlate,
};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A Chinese plate: province, letter, five or six letters/digits.
fn plate() -> impl Strategy<Value = String> {
    "[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼][A-HJ-NP-Z][A-HJ-NP-Z0-9]{5,6}"
}

fn color() -> impl Strategy<Value = PlateColor> {
    prop::sample::select(vec![
        PlateColor::Blue,
        PlateColor::Yellow,
        PlateColor::White,
        PlateColor::Black,
        PlateColor::Green,
        PlateColor::YellowGreen,
    ])
}

/// Any JSON value, a few levels deep: what a broken or hostile camera might send in a field.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN/inf", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The Uniview LAPI layout of profiles/camera/generic-json.toml, spelled out so the test does
/// not depend on reading the file.
fn lapi_settings(time_format: &str) -> JsonSettings {
    let base = "/StructureInfo/ObjInfo/VehicleInfoList/0";
    JsonSettings {
        plate: format!("{base}/PlateAttributeInfo/PlateNo"),
        color: Some(format!("{base}/PlateAttributeInfo/Color")),
        confidence: Some(format!("{base}/PlateAttributeInfo/Confidence")),
        time: Some(format!("{base}/PassTime")),
        time_format: time_format.to_string(),
        id: Some(format!("{base}/ID")),
        images: vec![
            ImagePath {
                path: "/StructureInfo/ImageInfoList/0/Data".into(),
                kind: ImageKind::Scene,
            },
            ImagePath {
                path: "/StructureInfo/ImageInfoList/1/Data".into(),
                kind: ImageKind::Plate,
            },
        ],
        ..JsonSettings::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // ----------------------------------------------------------------------------------------
    // VZ

    #[test]
    fn vz_parse_push_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_push(&data, true, 8);
    }

    #[test]
    fn vz_parse_push_never_panics_on_odd_field_values(
        fields in prop::collection::btree_map(
            prop::sample::select(vec![
                "license", "colorType", "platecolor", "confidence", "direction", "triggerType",
                "plateid", "isoffline", "timeStamp", "recotime", "imageFile", "imageFragmentFile",
            ]),
            json_value(),
            0..12,
        ),
        sec in any::<i64>(),
        usec in any::<i64>(),
        offset in any::<i32>(),
        gio in json_value(),
    ) {
        let mut pr: serde_json::Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if !pr.contains_key("timeStamp") {
            pr.insert("timeStamp".into(), json!({"Timeval": {"sec": sec, "usec": usec}}));
        }
        let body = json!({"AlarmInfoPlate": {"result": {"PlateResult": pr}}}).to_string();
        let _ = parse_push(body.as_bytes(), true, offset);
        let gio = json!({"AlarmGioIn": {"result": {"TriggerResult": {"source": gio.clone(), "value": gio}}}});
        let _ = parse_push(gio.to_string().as_bytes(), true, offset);
    }

    #[test]
    fn vz_plate_push_round_trips(
        plate in plate(),
        code in 0u8..=6,
        plateid in 0u64..=i64::MAX as u64,
        offline in any::<bool>(),
        sec in 0i64..4_102_444_800,
        image_bytes in prop_oneof![Just(0usize), 4usize..3000],
    ) {
        let mut p = VzPlate::new(&plate, plateid);
        p.color = code;
        p.offline = offline;
        p.sec = sec;
        p.image_bytes = image_bytes;
        let body = vz_plate_json(&p);
        let msg = parse_push(&body, true, 8).unwrap();
        let VzMessage::Plate { read, plateid: id } = msg else {
            panic!("not a plate: {msg:?}");
        };
        prop_assert_eq!(&read.plate, &plate);
        prop_assert_eq!(read.color, color_from_code(i64::from(code)));
        prop_assert_eq!(id, Some(plateid as i64));
        prop_assert_eq!(read.source_id, Some(plateid.to_string()));
        prop_assert_eq!(read.offline_replay, offline);
        prop_assert_eq!(read.captured_at.map(|t| t.timestamp()), Some(sec));
        if image_bytes > 0 {
            prop_assert_eq!(read.images.len(), 2);
            prop_assert_eq!(read.images[0].kind, ImageKind::Scene);
            prop_assert_eq!(&read.images[0].jpeg[..], &fake_jpeg(image_bytes)[..]);
            prop_assert_eq!(read.images[1].kind, ImageKind::Plate);
        } else {
            prop_assert!(read.images.is_empty());
        }
    }

    // ----------------------------------------------------------------------------------------
    // Hikvision

    #[test]
    fn hik_parse_alert_never_panics_on_text(text in ".{0,300}") {
        let _ = parse_alert(&text);
    }

    #[test]
    fn hik_parse_alert_never_panics_on_odd_documents(
        values in prop::collection::vec((
            prop::sample::select(vec![
                "eventType", "licensePlate", "originalLicensePlate", "plateNumber", "plateColor",
                "confidenceLevel", "UUID", "dateTime", "direction", "hasMoreData",
                "isDataRetransmission", "pictureInfo", "fileName", "type",
            ]),
            "[^<&]{0,20}",
        ), 0..12),
        anpr in any::<bool>(),
    ) {
        let mut xml = String::from("<EventNotificationAlert>");
        if anpr {
            xml.push_str("<eventType>ANPR</eventType>");
        }
        for (tag, v) in &values {
            xml.push_str(&format!("<{tag}>{v}</{tag}>"));
        }
        xml.push_str("</EventNotificationAlert>");
        let _ = parse_alert(&xml);
    }

    #[test]
    fn hik_anpr_alert_round_trips(
        plate in plate(),
        color in color(),
        uuid in "[A-Za-z0-9-]{1,36}",
        has_more in any::<bool>(),
        retransmitted in any::<bool>(),
    ) {
        let mut xml = hik_anpr_xml(&plate, &uuid, color.name(), has_more);
        if retransmitted {
            xml = xml.replace("<isDataRetransmission>false", "<isDataRetransmission>true");
        }
        let ev = parse_alert(&xml).unwrap();
        prop_assert_eq!(ev.event_type.as_str(), "ANPR");
        prop_assert_eq!(ev.uuid.as_deref(), Some(uuid.as_str()));
        prop_assert_eq!(ev.has_more, has_more);
        prop_assert_eq!(ev.retransmission, retransmitted);
        let read = ev.read.unwrap();
        prop_assert_eq!(&read.plate, &plate);
        prop_assert_eq!(read.color, color);
        prop_assert_eq!(color_from_name(color.name()), color);
        prop_assert_eq!(read.source_id.as_deref(), Some(uuid.as_str()));
        prop_assert_eq!(read.offline_replay, retransmitted);
        prop_assert_eq!(ev.pictures.len(), 2);
    }

    #[test]
    fn hik_multipart_split_never_panics(
        content_type in prop_oneof![
            Just("multipart/form-data; boundary=b".to_string()),
            "multipart/form-data; boundary=[ -~]{0,20}",
            "[ -~]{0,40}",
            ".{0,20}",
        ],
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let _ = rt().block_on(hik::split_push(&content_type, Bytes::from(body)));
    }

    #[test]
    fn hik_multipart_truncated_or_corrupted_never_panics(
        plate in plate(),
        cut in any::<prop::sample::Index>(),
        flip in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let xml = hik_anpr_xml(&plate, "u1", "blue", false);
        let jpeg = fake_jpeg(300);
        let mut body = multipart_body("bnd", &[
            ("anpr.xml", Some("anpr.xml"), "application/xml", xml.as_bytes()),
            ("detectionPicture.jpg", Some("detectionPicture.jpg"), "image/jpeg", &jpeg),
        ]);
        for (at, b) in &flip {
            let i = at.index(body.len());
            body[i] = *b;
        }
        body.truncate(cut.index(body.len() + 1));
        let r = rt().block_on(hik::split_push("multipart/form-data; boundary=bnd", Bytes::from(body)));
        if let Ok((x, _)) = r {
            // Whatever came out as the XML is what the alert parser then gets.
            let _ = parse_alert(&String::from_utf8_lossy(&x));
        }
    }

    #[test]
    fn hik_multipart_round_trips(
        boundary in "[A-Za-z0-9]{8,40}",
        plate in plate(),
        uuid in "[A-Za-z0-9-]{1,36}",
        pictures in prop::collection::vec(
            ("[a-zA-Z]{1,12}", prop::collection::vec(any::<u8>(), 0..800)),
            0..4,
        ),
    ) {
        let xml = hik_anpr_xml(&plate, &uuid, "yellow", false);
        let jpegs: Vec<(String, Vec<u8>)> = pictures
            .into_iter()
            .map(|(name, mut data)| {
                // JPEG parts are recognised by their SOI marker.
                let mut j = vec![0xFF, 0xD8];
                j.append(&mut data);
                (format!("{name}.jpg"), j)
            })
            .collect();
        let mut parts: Vec<(&str, Option<&str>, &str, &[u8])> =
            vec![("anpr.xml", Some("anpr.xml"), "application/xml", xml.as_bytes())];
        for (name, data) in &jpegs {
            parts.push((name, Some(name), "image/jpeg", data));
        }
        let body = multipart_body(&boundary, &parts);
        let (x, images) = rt()
            .block_on(hik::split_push(
                &format!("multipart/form-data; boundary={boundary}"),
                Bytes::from(body),
            ))
            .unwrap();
        prop_assert_eq!(&x[..], xml.as_bytes());
        prop_assert_eq!(images.len(), jpegs.len());
        for ((name, data), (n, d)) in images.iter().zip(&jpegs) {
            prop_assert_eq!(name, n);
            prop_assert_eq!(&data[..], &d[..]);
        }
        let ev = parse_alert(std::str::from_utf8(&x).unwrap()).unwrap();
        prop_assert_eq!(ev.read.unwrap().plate, plate);
    }

    // ----------------------------------------------------------------------------------------
    // Profile-described JSON camera

    #[test]
    fn json_parse_never_panics(
        doc in json_value(),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        format in prop::sample::select(vec!["unix", "unix_ms", "rfc3339", "%Y%m%d%H%M%S"]),
        offset in any::<i32>(),
        strip in any::<bool>(),
    ) {
        let s = JsonSettings {
            utc_offset_hours: offset,
            strip_control_chars: strip,
            ..lapi_settings(format)
        };
        let _ = generic::parse(&bytes, &s);
        let _ = generic::parse(doc.to_string().as_bytes(), &s);
        // The same junk at the places the profile points to.
        let mut body = json!({});
        for p in [&s.plate, s.color.as_ref().unwrap(), s.time.as_ref().unwrap(), s.id.as_ref().unwrap()] {
            let _ = ecogate_drivers::sim::camera::set_pointer(&mut body, p, doc.clone());
        }
        let _ = generic::parse(body.to_string().as_bytes(), &s);
    }

    #[test]
    fn json_push_round_trips_through_the_profile(
        plate in plate(),
        color in color(),
        id in "[A-Za-z0-9]{1,20}",
        confidence in 0u8..=100,
        secs in 0i64..4_102_444_800,
        format in prop::sample::select(vec!["unix", "unix_ms", "rfc3339", "%Y%m%d%H%M%S", "%Y-%m-%d %H:%M:%S"]),
        image_bytes in prop_oneof![Just(0usize), 4usize..2000],
    ) {
        let s = lapi_settings(format);
        let captured_at = DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
        let p = JsonPlate {
            plate: plate.clone(),
            color,
            confidence,
            id: id.clone(),
            captured_at,
            image_bytes,
        };
        let body = json_push_body(&s, &p).unwrap();
        let read = generic::parse(&body, &s).unwrap();
        prop_assert_eq!(&read.plate, &plate);
        prop_assert_eq!(read.color, color);
        prop_assert_eq!(read.confidence, confidence);
        prop_assert_eq!(read.source_id.as_deref(), Some(id.as_str()));
        prop_assert_eq!(read.captured_at, Some(captured_at));
        prop_assert_eq!(read.images.len(), if image_bytes > 0 { 2 } else { 0 });
        if image_bytes > 0 {
            prop_assert_eq!(&read.images[0].jpeg[..], &fake_jpeg(image_bytes)[..]);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Digest

    #[test]
    fn digest_parsers_never_panic(text in ".{0,200}", tail in "[ -~]{0,120}") {
        let _ = parse_challenge(&text);
        let _ = parse_challenge(&format!("Digest {tail}"));
        let _ = parse_challenge(&format!("digest{text}"));
        let _ = verify(&text, "admin", "pw", "PUT", "realm");
        let _ = verify(&format!("Digest {tail}"), "admin", "pw", "PUT", "realm");
    }

    #[test]
    fn digest_challenge_round_trips(
        realm in "[A-Za-z0-9 .@:/_,=-]{0,30}",
        nonce in "[A-Za-z0-9+/=]{1,40}",
        opaque in prop::option::of("[A-Za-z0-9]{1,32}"),
        qop in any::<bool>(),
        sess in any::<bool>(),
        stale in any::<bool>(),
        order in Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
    ) {
        let mut params: Vec<String> = vec![
            format!(r#"realm="{realm}""#),
            format!(r#"nonce="{nonce}""#),
            if qop { r#"qop="auth,auth-int""#.into() } else { String::new() },
            format!("algorithm={}", if sess { "MD5-sess" } else { "MD5" }),
            format!("stale={}", if stale { "TRUE" } else { "FALSE" }),
            opaque.as_ref().map(|o| format!(r#"opaque="{o}""#)).unwrap_or_default(),
        ];
        params = order.iter().map(|i| params[*i].clone()).filter(|p| !p.is_empty()).collect();
        let header = format!("Digest {}", params.join(", "));
        let c = parse_challenge(&header).unwrap();
        prop_assert_eq!(c, Challenge {
            realm: realm.clone(),
            nonce,
            opaque,
            qop: qop.then(|| "auth".to_string()),
            sess,
            stale,
        });
    }

    #[test]
    fn digest_authorization_verifies_only_the_right_password(
        realm in "[A-Za-z0-9 .@_-]{1,20}",
        nonce in "[A-Za-z0-9]{1,40}",
        user in "[A-Za-z0-9_]{1,12}",
        pass in "[ -~]{0,20}",
        other in "[ -~]{0,20}",
        uri in "/[A-Za-z0-9/_.]{0,30}",
        method in prop::sample::select(vec!["GET", "PUT", "POST"]),
        nc in 1u32..1000,
        qop in any::<bool>(),
        sess in any::<bool>(),
    ) {
        let c = Challenge {
            realm: realm.clone(),
            nonce,
            opaque: None,
            qop: qop.then(|| "auth".to_string()),
            sess,
            stale: false,
        };
        let h = authorization(&c, &user, &pass, method, &uri, nc, "0a4f113b");
        prop_assert!(verify(&h, &user, &pass, method, &realm));
        prop_assert_eq!(verify(&h, &user, &other, method, &realm), other == pass);
    }
}
