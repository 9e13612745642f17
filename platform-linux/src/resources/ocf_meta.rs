//! An OCF resource agent's `meta-data` XML: its parameters (which are required) and the
//! timeouts and monitor interval it advises, which we use unless the spec overrides them.
//!
//! Format (OCF resource-agent API): `<resource-agent><parameters><parameter name=".."
//! required="1">..</parameters><actions><action name="start" timeout="20s"/>..`. Durations
//! are a number with an optional unit (`ms`, `s`, `m`/`min`, `h`; none means seconds).

/// What the runner uses from the meta-data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AgentMeta {
    pub params: Vec<Param>,
    /// Names of the advertised actions (`start`, `validate-all`, ...).
    pub actions: Vec<String>,
    pub start_ms: Option<u64>,
    pub stop_ms: Option<u64>,
    /// Of the depth-0 monitor (the first `monitor` action without a depth, or with depth 0).
    pub monitor_ms: Option<u64>,
    pub monitor_interval_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Param {
    pub name: String,
    pub required: bool,
}

/// Parses `20s`, `500ms`, `2m`, `2min`, `1h`, `30` (seconds) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "msec" => 1,
        "" | "s" | "sec" => 1_000,
        "m" | "min" => 60_000,
        "h" | "hr" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Parses the meta-data document; an error says what is wrong with it.
pub(crate) fn parse(xml: &str) -> Result<AgentMeta, String> {
    // Agents start with `<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">`; the external DTD
    // is never fetched.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let document = roxmltree::Document::parse_with_options(xml, options)
        .map_err(|error| format!("invalid meta-data XML: {error}"))?;
    let root = document.root_element();
    if !root.has_tag_name("resource-agent") {
        return Err(format!(
            "meta-data root element is <{}>, expected <resource-agent>",
            root.tag_name().name()
        ));
    }
    let mut meta = AgentMeta::default();
    for node in root.descendants().filter(|n| n.is_element()) {
        match node.tag_name().name() {
            "parameter" => {
                let Some(name) = node.attribute("name") else {
                    continue;
                };
                meta.params.push(Param {
                    name: name.to_string(),
                    required: matches!(node.attribute("required"), Some("1" | "true" | "yes")),
                });
            }
            "action" => read_action(&node, &mut meta),
            _ => {}
        }
    }
    Ok(meta)
}

fn read_action(node: &roxmltree::Node<'_, '_>, meta: &mut AgentMeta) {
    let Some(name) = node.attribute("name") else {
        return;
    };
    let timeout = node.attribute("timeout").and_then(parse_duration_ms);
    match name {
        "start" if meta.start_ms.is_none() => meta.start_ms = timeout,
        "stop" if meta.stop_ms.is_none() => meta.stop_ms = timeout,
        "monitor" => {
            let depth0 = node.attribute("depth").is_none_or(|d| d.trim() == "0");
            // Role-specific monitors (promotable agents) are not ours.
            let plain = node.attribute("role").is_none();
            if depth0 && plain && meta.monitor_ms.is_none() {
                meta.monitor_ms = timeout;
                meta.monitor_interval_ms = node.attribute("interval").and_then(parse_duration_ms);
            }
        }
        _ => {}
    }
    if !meta.actions.iter().any(|known| known == name) {
        meta.actions.push(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("20s"), Some(20_000));
        assert_eq!(parse_duration_ms("20"), Some(20_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("2min"), Some(120_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms(" 10s "), Some(10_000));
        assert_eq!(parse_duration_ms("s"), None);
        assert_eq!(parse_duration_ms("10 parsecs"), None);
        assert_eq!(parse_duration_ms("PT10S"), None);
        assert_eq!(parse_duration_ms("99999999999999999999h"), None);
    }

    const NGINX_LIKE: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="x" version="1.0">
<parameters>
<parameter name="configfile" required="0" unique="1"><content type="string"/></parameter>
<parameter name="ip" unique="1" required="1"><content type="string"/></parameter>
<parameter name="port"/>
</parameters>
<actions>
<action name="start"   timeout="40s" />
<action name="stop"    timeout="60s" />
<action name="monitor" timeout="30s" depth="10" interval="30s" />
<action name="monitor" timeout="20s" depth="0" interval="10s" />
<action name="monitor" timeout="45s" depth="20" />
<action name="validate-all"  timeout="5s" />
</actions>
</resource-agent>"#;

    #[test]
    fn meta_data() {
        let meta = parse(NGINX_LIKE).expect("parses");
        assert_eq!(meta.start_ms, Some(40_000));
        assert_eq!(meta.stop_ms, Some(60_000));
        assert_eq!(meta.monitor_ms, Some(20_000));
        assert_eq!(meta.monitor_interval_ms, Some(10_000));
        let required: Vec<&str> = meta
            .params
            .iter()
            .filter(|p| p.required)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(required, ["ip"]);
        assert_eq!(meta.params.len(), 3);
        assert!(meta.actions.iter().any(|a| a == "validate-all"));
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(parse("not xml").is_err());
        assert!(parse("<other/>")
            .unwrap_err()
            .contains("expected <resource-agent>"));
        let empty = parse("<resource-agent/>").expect("minimal");
        assert_eq!(empty, AgentMeta::default());
    }
}
