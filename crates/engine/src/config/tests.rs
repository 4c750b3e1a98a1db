use super::*;
use serde_json::json;

fn err(v: Value) -> ConfigError {
    parse_routes(&v).unwrap_err()
}

fn fwd() -> Value {
    json!({"type": "forward", "target": {"host": "127.0.0.1", "port": 8080}})
}

#[test]
fn errors_name_route_and_field() {
    let e = err(json!([
        {"name": "ok", "match": {"ports": 80}, "action": fwd()},
        {"name": "api", "match": {"ports": [80, {"from": 10, "to": 70000}]}, "action": fwd()}
    ]));
    assert_eq!(
        e,
        ConfigError::Invalid(
            "route \"api\" (index 1): match.ports[1].to: port must be an integer 1-65535, got 70000".into()
        )
    );
    let e =
        err(json!([{ "match": {"ports": 80}, "action": {"type": "forward", "targets": [{"host": "a", "port": "x"}]}}]));
    assert_eq!(e.to_string(), "route at index 0: action.targets[0].port: port must be an integer 1-65535, got \"x\"");
    let e = err(json!([{ "match": {"ports": 80, "clientIp": ["10.0.0.0/99"]}, "action": fwd()}]));
    assert!(e.to_string().starts_with("route at index 0: match.clientIp[0]: invalid IP pattern"), "{e}");
    let e = err(json!([{ "name": "x", "match": {}, "action": fwd()}]));
    assert_eq!(e.to_string(), "route \"x\" (index 0): match.ports is required");
    let e = err(json!([{ "name": "x", "match": {"ports": 1}, "action": {"type": "forward"}}]));
    assert!(e.to_string().contains("at least one target"), "{e}");
    let e = err(json!([{ "match": {"ports": 1}, "action": {"type": "redirect"}}]));
    assert!(e.to_string().contains("removed in 19.5"), "{e}");
}

#[test]
fn unbuilt_features_fail_loudly() {
    let cases = [
        (
            json!({"type": "socket-handler", "socketHandler": {"$fn": 1}, "tls": {"mode": "terminate", "certificate": {"key": "k", "cert": "c"}}}),
            "socket handler",
        ),
        (json!({"type": "forward", "target": {"host": "a", "port": 1}, "forwardingEngine": "nftables"}), "nftables"),
        (
            json!({"type": "forward", "target": {"host": "a", "port": 1}, "websocket": {"enabled": true, "enableCompression": true}}),
            "websocket.enableCompression",
        ),
        (
            json!({"type": "forward", "target": {"host": "a", "port": 1}, "loadBalancing": {"algorithm": "ip-hash"}}),
            "ip-hash",
        ),
    ];
    for (action, what) in cases {
        let e = err(json!([{ "name": "r", "match": {"ports": 1}, "action": action }]));
        match &e {
            ConfigError::NotSupported(m) => {
                assert!(m.contains(what) && m.contains("route \"r\""), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("not supported yet: "));
    }
    let e = err(json!([{ "match": {"ports": 1}, "action": fwd(), "security": {"authentication": {"type": "oauth"}}}]));
    assert!(matches!(e, ConfigError::NotSupported(_)));
    // HTTP-only security on a passthrough route could never apply.
    let e = err(
        json!([{ "match": {"ports": 1}, "action": {"type": "forward", "target": {"host": "a", "port": 1}, "tls": {"mode": "passthrough"}},
        "security": {"rateLimit": {"enabled": true, "maxRequests": 1, "window": 1}}}]),
    );
    assert!(e.to_string().contains("need HTTP"), "{e}");
    // advanced.testResponse: parsed as given; its errors name the field.
    let tr = |t: serde_json::Value| {
        parse_routes(&json!([{ "name": "t", "match": {"ports": 1, "domains": "a"},
            "action": {"type": "forward", "target": {"host": "a", "port": 1}, "advanced": {"testResponse": t}}}]))
    };
    let routes =
        tr(json!({"status": 418, "headers": {"Content-Type": "text/plain", "X-A": "b"}, "body": "teapot"})).unwrap();
    let RouteAction::Forward(f) = &routes[0].action;
    let t = f.http.test_response.as_ref().unwrap();
    assert_eq!((t.status.as_u16(), t.headers.len(), &t.body[..]), (418, 2, &b"teapot"[..]));
    assert_eq!(tr(json!({"status": 204})).unwrap().len(), 1);
    for (bad, msg) in [
        (json!({"body": "x"}), "action.advanced.testResponse: status is required"),
        (json!({"status": 101}), "action.advanced.testResponse.status: a final status 200-599, got 101"),
        (
            json!({"status": 200, "headers": {"Content-Length": "3"}}),
            "action.advanced.testResponse.headers.Content-Length: set by the proxy",
        ),
        (
            json!({"status": 200, "headers": {"Transfer-Encoding": "chunked"}}),
            "testResponse.headers.Transfer-Encoding: set by the proxy",
        ),
        (json!({"status": 200, "headers": {"X": 1}}), "action.advanced.testResponse.headers.X: expected a string"),
        (json!({"status": 304, "body": "x"}), "a 304 response has no body"),
    ] {
        let e = tr(bad).unwrap_err().to_string();
        assert!(e.contains(msg) && e.contains("route \"t\""), "{e}");
    }
    let e = err(json!([{ "match": {"ports": 1}, "action": {"type": "forward", "target": {"host": "a", "port": 1},
        "tls": {"mode": "passthrough"}, "advanced": {"testResponse": {"status": 200}}}}]));
    assert!(e.to_string().contains("needs HTTP"), "{e}");
    // Explicitly disabled features ask for nothing.
    parse_routes(
        &json!([{ "match": {"ports": 1}, "action": fwd(), "security": {"basicAuth": {"enabled": false, "users": []}}}]),
    )
    .unwrap();
}

#[test]
fn accepts_upstream_shapes() {
    let routes = parse_routes(&json!([
        {"name": "a", "id": "r1", "priority": 5, "tags": ["x"], "description": "d",
         "match": {"ports": [80, {"from": 8000, "to": 8010}], "domains": "Example.com", "clientIp": ["::ffff:127.0.0.1"], "path": "/x/:id"},
         "action": {"type": "forward", "targets": [{"host": ["a", "b"], "port": "preserve"}], "tls": {"mode": "passthrough"},
                    "loadBalancing": {"algorithm": "round-robin"}, "unknownFutureKey": 1},
         "security": {"ipAllowList": ["127.0.0.1"], "ipBlockList": ["10.0.0.0/8"], "maxConnections": 3}}
    ]))
    .unwrap();
    let r = &routes[0];
    assert_eq!(r.id.as_deref(), Some("r1"));
    assert_eq!(r.ports.len(), 2);
    assert_eq!(r.domains[0].as_str(), "example.com");
    assert_eq!(r.security.max_connections, Some(3));
    let RouteAction::Forward(f) = &r.action;
    assert_eq!(f.targets[0].port, TargetPort::Preserve);
    assert_eq!(f.tls.as_ref().map(|t| t.mode), Some(TlsMode::Passthrough));
    assert!(f.balance_targets);
}

#[test]
fn options_defaults_and_errors() {
    let (o, w) = parse_options(&json!({"routes": [], "connectionTimeout": 5000, "keepAliveTreatment": "immortal",
        "maxConnectionsPerIP": 0, "defaults": {"target": {"host": "x", "port": 9}}, "domainConfigs": []}))
    .unwrap();
    assert_eq!(o.connection_timeout, Duration::from_secs(5));
    assert_eq!(o.keep_alive_treatment, KeepAliveTreatment::Immortal);
    assert_eq!(o.max_connections_per_ip, None);
    assert_eq!(o.connection_rate_limit_per_minute, Some(300));
    assert_eq!(o.default_target, Some(HostPort { host: "x".into(), port: 9 }));
    assert_eq!(w.len(), 1);
    let e = parse_options(&json!({"connectionTimeout": "soon"})).unwrap_err();
    assert_eq!(e.to_string(), "options.connectionTimeout: expected a number, got \"soon\"");
    // PROXY protocol options: v1 for `true`, as upstream; accept defaults to "proxyIPs given".
    use crate::proxy_protocol::Version;
    let (o, _) = parse_options(&json!({"sendProxyProtocol": true, "proxyIPs": ["10.0.0.0/8"]})).unwrap();
    assert_eq!((o.send_proxy_protocol, o.accept_proxy_protocol, o.proxy_ips.len()), (Some(Version::V1), true, 1));
    let (o, _) =
        parse_options(&json!({"sendProxyProtocol": "v2", "proxyIPs": ["10.0.0.*"], "acceptProxyProtocol": false}))
            .unwrap();
    assert_eq!((o.send_proxy_protocol, o.accept_proxy_protocol), (Some(Version::V2), false));
    // deferAccept follows acceptProxyProtocol unless given.
    assert!(!o.defer_accept);
    let (o, _) = parse_options(&json!({"proxyIPs": ["10.0.0.1"]})).unwrap();
    assert!(o.defer_accept);
    let (o, _) = parse_options(&json!({"proxyIPs": ["10.0.0.1"], "deferAccept": false})).unwrap();
    assert!(!o.defer_accept && o.accept_proxy_protocol);
    assert!(parse_options(&json!({"deferAccept": true})).unwrap().0.defer_accept);
    assert!(!parse_options(&json!({})).unwrap().0.defer_accept);
    let e = parse_options(&json!({"deferAccept": "yes"})).unwrap_err();
    assert_eq!(e.to_string(), "options.deferAccept: expected a boolean, got \"yes\"");
    assert_eq!(parse_options(&json!({})).unwrap().0.send_proxy_protocol, None);
    let e = parse_options(&json!({"sendProxyProtocol": "v3"})).unwrap_err();
    assert!(e.to_string().contains("options.sendProxyProtocol"), "{e}");
    let e = parse_options(&json!({"acceptProxyProtocol": true})).unwrap_err();
    assert!(e.to_string().contains("proxyIPs"), "{e}");
    let e = parse_options(&json!({"proxyIPs": ["not an ip"]})).unwrap_err();
    assert!(e.to_string().contains("proxyIPs"), "{e}");
    let e = parse_options(&json!({"defaults": {"target": {"host": "x"}}})).unwrap_err();
    assert!(e.to_string().contains("defaults.target"), "{e}");
    let (o, _) = parse_options(&json!({"inactivityTimeout": 1e15})).unwrap();
    assert_eq!(o.inactivity_timeout, Duration::from_millis(MAX_TIMER_MS));
}

#[test]
fn http_options_and_certificates() {
    let routes = parse_routes(&json!([
        {"name": "web", "match": {"ports": 443, "domains": "a.test"},
         "action": {"type": "forward", "target": {"host": "b", "port": 80},
                    "options": {"backendProtocol": "http2", "rejectUnauthorized": true},
                    "advanced": {"timeout": 5000, "urlRewrite": {"pattern": "^/old/(.*)$", "target": "/new/$1"}},
                    "websocket": {"enabled": true, "allowedOrigins": ["https://a.test"]}},
         "headers": {"request": {"X-Route": "{routeName}"}, "response": {"X-Served-By": "smartproxy"},
                     "cors": {"enabled": true, "allowOrigin": "*"}}}
    ]))
    .unwrap();
    let RouteAction::Forward(f) = &routes[0].action;
    assert!(f.http.backend_http2 && f.http.verify_backend);
    assert_eq!(f.http.request_headers[0].name.as_str(), "x-route");
    assert_eq!(f.http.request_timeout, Some(Duration::from_secs(5)));
    assert_eq!(f.http.cors.as_ref().unwrap().allow_origin, vec!["*"]);
    assert_eq!(f.http.websocket.as_ref().unwrap().allowed_origins, vec!["https://a.test"]);
    let rw = f.http.url_rewrite.as_ref().unwrap();
    assert_eq!(rw.pattern.replace("/old/x", rw.target.as_str()), "/new/x");

    // A certificate that does not parse is refused with the route and field named.
    let e = parse_routes(
        &json!([{"name": "t", "match": {"ports": 443}, "action": {"type": "forward", "target": {"host": "b", "port": 1},
        "tls": {"mode": "terminate", "certificate": {"key": "nope", "cert": "nope"}}}}]),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("route \"t\" (index 0): action.tls.certificate: "), "{e}");
    // Header rules on a passthrough route can never apply.
    let e = parse_routes(&json!([{"match": {"ports": 443}, "action": {"type": "forward", "target": {"host": "b", "port": 1}, "tls": {"mode": "passthrough"}},
        "headers": {"request": {"x": "y"}}}]))
    .unwrap_err();
    assert!(e.to_string().contains("passthrough"), "{e}");
}

/// Replaces one random node of `v` (chosen by `pick`) with an odd value of another type.
fn mutate_node(v: &mut Value, pick: &mut impl FnMut(usize) -> usize) {
    const ODD: [&str; 14] = [
        "null",
        "0",
        "-1",
        "65536",
        "1.5",
        "\"\"",
        "\"*\"",
        "\"a..b\"",
        "\"[::1\"",
        "\"/:x/*\"",
        "[]",
        "{}",
        "true",
        "\"10.0.0.0/33\"",
    ];
    let children: usize = match v {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        _ => 0,
    };
    if children == 0 || pick(4) == 0 {
        *v = serde_json::from_str(ODD[pick(ODD.len())]).unwrap();
        return;
    }
    let i = pick(children);
    match v {
        Value::Array(a) => mutate_node(&mut a[i], pick),
        Value::Object(o) => {
            if let Some((_, child)) = o.iter_mut().nth(i) {
                mutate_node(child, pick)
            }
        }
        _ => {}
    }
}

/// Broken variants of a rich route set are refused with an error or compiled into a table that
/// matches requests; nothing panics (a panic here would surface in `start()`/`updateRoutes()`).
#[test]
fn random_route_mutations_never_panic() {
    let seed = json!([
        {"name": "web", "priority": 5, "match": {"ports": [80, {"from": 8000, "to": 8010}], "domains": ["*.example.com", "example.org"],
          "path": "/api/:version/*", "clientIp": ["10.0.0.0/8", "::1", "192.168.1.*"], "headers": {"x-env": "/^prod$/i", "x-a": "b"}},
         "headers": {"request": {"X-Route": "{routeName}"}, "response": {"X-Served": "{domain}"}},
         "action": {"type": "forward", "targets": [{"host": ["a", "b"], "port": 81, "match": {"path": "/x/*"}}, {"host": "c", "port": "preserve"}],
           "advanced": {"urlRewrite": {"pattern": "^/api/(.*)$", "target": "/$1"}, "timeout": 5000,
             "testResponse": {"status": 200, "headers": {"x-t": "1"}, "body": "ok"}},
           "loadBalancing": {"algorithm": "round-robin"}},
         "security": {"ipAllowList": ["10.1.2.*", "::1"], "ipBlockList": ["10.0.0.9"], "maxConnections": 10,
           "basicAuth": {"enabled": true, "users": [{"username": "u", "password": "p"}], "realm": "r"},
           "rateLimit": {"enabled": true, "maxRequests": 5, "window": 60}}},
        {"name": "tls", "match": {"ports": 443, "domains": "secure.example.com", "tlsVersion": ["TLSv1.3"]},
         "action": {"type": "forward", "target": {"host": "127.0.0.1", "port": 8443}, "tls": {"mode": "passthrough"},
           "websocket": {"enabled": true, "pingInterval": 1000, "maxPayloadSize": 1024}}},
        {"name": "js", "match": {"ports": 9000}, "action": {"type": "socket-handler", "socketHandler": {"$fn": 1}}},
        {"match": {"ports": 9001}, "action": {"type": "forward", "target": {"host": {"$fn": 2}, "port": {"$fn": 3}}}}
    ]);
    let routes = parse_routes(&seed).expect("the seed is valid");
    // The seed's HTTP options sit where they are read (mutating unread keys would test nothing).
    let RouteAction::Forward(web) = &routes[0].action;
    assert_eq!(web.http.request_headers.len(), 1);
    assert_eq!(web.http.response_headers.len(), 1);
    assert!(web.http.url_rewrite.is_some() && web.http.request_timeout.is_some());
    assert!(web.http.test_response.as_ref().is_some_and(|t| t.headers.len() == 1));
    let RouteAction::Forward(tls) = &routes[1].action;
    assert!(tls.http.websocket.as_ref().is_some_and(|w| w.max_payload.is_some()));
    let head =
        crate::detect::parse_http_head(b"GET /api/v1/users?q=1 HTTP/1.1\r\nHost: a.example.com\r\nX-Env: PROD\r\n\r\n")
            .unwrap();
    let probe = |table: &crate::matching::RouteTable| {
        for port in [80, 443, 8005, 9000, 9001] {
            for ip in ["10.1.2.3", "::1", "192.168.1.7"] {
                let ip: std::net::IpAddr = ip.parse().unwrap();
                let _ = table.early(port, ip);
                let input = crate::matching::MatchInput {
                    port,
                    client_ip: ip,
                    domain: Some("a.example.com"),
                    http: Some(&head),
                    tls_version: None,
                };
                if let Some(i) = table.find(&input) {
                    let _ = table.select_target(i, &input);
                }
            }
        }
    };
    probe(&crate::matching::RouteTable::new(routes));
    let mut rng = crate::testutil::Rng::new(0x2545_f491_4f6c_dd1d);
    let mut pick = |n: usize| rng.below(n);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..5_000 {
        let mut v = seed.clone();
        for _ in 0..1 + pick(3) {
            mutate_node(&mut v, &mut pick);
        }
        match parse_routes(&v) {
            Ok(routes) => {
                accepted += 1;
                probe(&crate::matching::RouteTable::new(routes));
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // Both outcomes occur, so the mutations reach past the first checks.
    assert!(accepted > 100 && refused > 100, "accepted {accepted}, refused {refused}");
    let text = seed.to_string();
    crate::testutil::mutations(text.as_bytes(), 5_000, |b| {
        if let Ok(v) = serde_json::from_slice::<Value>(b) {
            if let Ok(routes) = parse_routes(&v) {
                probe(&crate::matching::RouteTable::new(routes));
            }
        }
    });
}

/// Durations and multipliers that would overflow what is built from them are refused with the
/// field's path, never a panic (`window: 1e300` panicked in `Duration::from_secs_f64`).
#[test]
fn huge_durations_and_multipliers_are_refused() {
    let e = err(json!([{ "name": "rl", "match": {"ports": 1}, "action": fwd(),
        "security": {"rateLimit": {"enabled": true, "maxRequests": 1, "window": 1e300}}}]));
    assert!(e.to_string().starts_with("route \"rl\" (index 0): security.rateLimit.window: must be at most"), "{e}");
    let ok = parse_routes(&json!([{ "match": {"ports": 1}, "action": fwd(),
        "security": {"rateLimit": {"enabled": true, "maxRequests": 1, "window": MAX_WINDOW_SECS}}}]));
    assert!(ok.is_ok());
    let e = parse_options(&json!({"keepAliveInactivityMultiplier": 1e300})).unwrap_err();
    assert!(e.to_string().contains("keepAliveInactivityMultiplier: must be at most 1000"), "{e}");
    // The largest accepted values multiply without overflow.
    let (o, _) = parse_options(&json!({
        "keepAliveInactivityMultiplier": MAX_MULTIPLIER,
        "inactivityTimeout": 1e300,
        "enableRandomizedTimeouts": true
    }))
    .unwrap();
    let (idle, _) = crate::dispatch::effective_timeouts(&o, true, 7);
    assert!(idle.is_some());
}

/// The defaults object is the option table applied to `Default`: fed back in, it parses to the
/// same options (names and values are written once, so they cannot drift apart).
#[test]
fn defaults_round_trip() {
    let d = ProxyOptions::defaults_json();
    assert_eq!(d["keepAliveTreatment"], "extended");
    assert_eq!(d["connectionTimeout"], 30_000);
    assert_eq!(d["maxConnectionsPerIP"], 100);
    let (o, warnings) = parse_options(&d).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(format!("{o:?}"), format!("{:?}", ProxyOptions::default()));
}

/// Global `acme` options and a route's `action.tls.acme` resolve into one route's settings, the
/// route's values first; what an `'auto'` route lacks is refused with the route's label.
#[test]
fn acme_settings_resolve_and_refuse() {
    let (o, _) = parse_options(&json!({"acme": {
        "accountEmail": "g@x.test", "port": 8080, "renewThresholdDays": 10, "renewCheckIntervalHours": 0.5,
        "directoryUrl": "https://127.0.0.1:14000/dir", "certificateStore": "/tmp/s"
    }}))
    .unwrap();
    let g = o.acme.as_ref().unwrap();
    assert_eq!(g.email.as_deref(), Some("g@x.test"));
    assert_eq!(g.renew_check_interval, Duration::from_secs(1800));
    let auto = |acme: Value, domains: Value| {
        let r = parse_routes(&json!([{"name": "r", "match": {"ports": 443, "domains": domains},
            "action": {"type": "forward", "target": {"host": "h", "port": 1},
                "tls": {"mode": "terminate", "certificate": "auto", "acme": acme}}}]))
        .unwrap()
        .remove(0);
        let RouteAction::Forward(f) = &r.action;
        let ra = f.tls.as_ref().unwrap().acme.clone().unwrap();
        (ra, r.domains.clone(), r.label())
    };
    let (ra, d, label) =
        auto(json!({"email": "r@x.test", "challengePort": 9090, "renewBeforeDays": 3}), json!("a.test"));
    let s = AcmeSettings::resolve(o.acme.as_ref(), &ra, &d, &label).unwrap();
    assert_eq!((s.email.as_str(), s.http_port, s.renew_before_days), ("r@x.test", 9090, 3.0));
    assert_eq!(s.directory_url, "https://127.0.0.1:14000/dir");
    let (ra, d, label) = auto(json!({}), json!("a.test"));
    let s = AcmeSettings::resolve(o.acme.as_ref(), &ra, &d, &label).unwrap();
    assert_eq!((s.email.as_str(), s.http_port, s.renew_before_days), ("g@x.test", 8080, 10.0));
    // No e-mail anywhere; a wildcard without DNS-01; DNS-01 itself (not built).
    let e = AcmeSettings::resolve(None, &ra, &d, &label).unwrap_err();
    assert!(e.to_string().starts_with("route \"r\" (index 0): ") && e.to_string().contains("e-mail"), "{e}");
    let (ra, d, label) = auto(json!({"email": "r@x.test"}), json!("*.a.test"));
    let e = AcmeSettings::resolve(None, &ra, &d, &label).unwrap_err();
    assert!(e.to_string().contains("DNS-01") && e.code() == "ERR_INVALID_CONFIG", "{e}");
    let (ra, d, label) = auto(json!({"email": "r@x.test", "challenge": "dns-01"}), json!("a.test"));
    let e = AcmeSettings::resolve(None, &ra, &d, &label).unwrap_err();
    assert!(e.code() == "ERR_INVALID_CONFIG" && e.to_string().contains("acme.dns01"), "{e}");
    let (o2, _) = parse_options(&json!({"acme": {"email": "g@x.test", "challenge": "dns-01",
        "dns01": {"setRecord": {"$fn": 7}, "removeRecord": {"$fn": 8}}}}))
    .unwrap();
    let (ra, d, label) = auto(json!({}), json!("*.a.test"));
    let s = AcmeSettings::resolve(o2.acme.as_ref(), &ra, &d, &label).unwrap();
    assert_eq!(s.dns01, Some(Dns01Hooks { set_record: 7, remove_record: 8 }), "a wildcard with DNS-01 is accepted");
    // Defaults: Let's Encrypt staging, production on request.
    let (ra, d, label) = auto(json!({"email": "r@x.test"}), json!("a.test"));
    assert_eq!(AcmeSettings::resolve(None, &ra, &d, &label).unwrap().directory_url, LETS_ENCRYPT_STAGING);
    let (ra, d, label) = auto(json!({"email": "r@x.test", "useProduction": true}), json!("a.test"));
    assert_eq!(AcmeSettings::resolve(None, &ra, &d, &label).unwrap().directory_url, LETS_ENCRYPT_PRODUCTION);
    // Bad values name their field.
    let e = parse_options(&json!({"acme": {"challenge": "dns-99"}})).unwrap_err();
    assert!(e.to_string().contains("acme.challenge: unknown challenge type"), "{e}");
    let e = parse_options(&json!({"acme": {"renewCheckIntervalHours": 1e300}})).unwrap_err();
    assert!(e.to_string().contains("acme.renewCheckIntervalHours: must be at most"), "{e}");
}
