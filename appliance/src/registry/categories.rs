//! The categories Kibana shows integrations under: identifier, display title and parent. These
//! are the interoperability facts the registry's `/categories` answers with (Kibana's
//! integrations page groups by them); a package's category missing here is dropped, as the
//! registry drops unknown ones (`packages/package.go`, `NewPackage`).

/// `(id, title, parent id)`; a parent is always a top-level category.
const TABLE: &[(&str, &str, Option<&str>)] = &[
    ("aws", "AWS", None),
    ("azure", "Azure", None),
    ("cloud", "Cloud", None),
    ("config_management", "Config management", None),
    ("containers", "Containers", None),
    ("crm", "CRM", None),
    ("custom", "Custom", None),
    ("custom_logs", "Custom Logs", Some("custom")),
    ("datastore", "Database", None),
    ("elastic_stack", "Elastic Stack", None),
    ("elasticsearch_sdk", "Elasticsearch SDK", None),
    ("enterprise_search", "Enterprise Search", None),
    ("app_search", "Application Search", Some("enterprise_search")),
    ("connector", "Connector", Some("enterprise_search")),
    ("connector_client", "Connector Client", Some("enterprise_search")),
    ("connector_package", "Connector Package", Some("enterprise_search")),
    ("content_source", "Content Source", Some("enterprise_search")),
    ("crawler", "Crawler", Some("enterprise_search")),
    ("language_client", "Language Client", Some("enterprise_search")),
    ("native_search", "Native Search", Some("enterprise_search")),
    ("sdk_search", "SDK", Some("enterprise_search")),
    ("workplace_search", "Workplace Search", Some("enterprise_search")),
    ("google_cloud", "Google Cloud", None),
    ("infrastructure", "Infrastructure", None),
    ("languages", "Languages", None),
    ("network", "Network", None),
    ("observability", "Observability", None),
    ("application_observability", "Application", Some("observability")),
    ("analytics_engine", "Analytics Engine", Some("observability")),
    ("big_data", "Big Data", Some("observability")),
    ("java_observability", "Java", Some("observability")),
    ("kubernetes", "Kubernetes", Some("observability")),
    ("load_balancer", "Load Balancer", Some("observability")),
    ("message_queue", "Message Broker", Some("observability")),
    ("monitoring", "Monitoring", Some("observability")),
    ("notification", "Notification", Some("observability")),
    ("process_manager", "Process Manager", Some("observability")),
    ("stream_processing", "Stream Processing", Some("observability")),
    ("virtualization", "Virtualization Platform", Some("observability")),
    ("web", "Web Server", Some("observability")),
    ("websphere", "WebSphere Application Server", Some("observability")),
    ("opentelemetry", "OpenTelemetry", None),
    ("os_system", "Operating Systems", None),
    ("productivity", "Productivity", None),
    ("security", "Security", None),
    ("advanced_analytics_ueba", "Advanced Analytics (UEBA)", Some("security")),
    ("asset_inventory", "Asset Inventory", Some("security")),
    ("auditd", "AuditD", Some("security")),
    ("authentication", "Authentication", Some("security")),
    ("cdn_security", "Content Delivery Network", Some("security")),
    ("cloudsecurity_cdr", "Cloud Security/CDR", Some("security")),
    ("credential_management", "Credential Management", Some("security")),
    ("database_security", "Database", Some("security")),
    ("dns_security", "DNS", Some("security")),
    ("edr_xdr", "EDR/XDR", Some("security")),
    ("email_security", "Email", Some("security")),
    ("firewall_security", "Firewall", Some("security")),
    ("iam", "Identity and Access Management", Some("security")),
    ("ids_ips", "IDS/IPS", Some("security")),
    ("misconfiguration_workflow", "Misconfiguration Workflow", Some("security")),
    ("network_security", "Network", Some("security")),
    ("productivity_security", "Productivity", Some("security")),
    ("proxy_security", "Proxy", Some("security")),
    ("siem", "SIEM", Some("security")),
    ("threat_intel", "Threat Intelligence", Some("security")),
    ("vpn_security", "VPN", Some("security")),
    ("vulnerability_management", "Vulnerability Management", Some("security")),
    ("vulnerability_workflow", "Vulnerability Workflow", Some("security")),
    ("web_application_firewall", "Web Application Firewall", Some("security")),
    ("support", "Support", None),
    ("ticketing", "Ticketing", None),
    ("version_control", "Version Control", None),
];

/// A known category's title and parent `(id, title)`.
pub(crate) fn lookup(id: &str) -> Option<(&'static str, Option<(&'static str, &'static str)>)> {
    let (_, title, parent) = TABLE.iter().find(|(i, _, _)| *i == id)?;
    let parent =
        parent.and_then(|p| TABLE.iter().find(|(i, _, _)| *i == p)).map(|(i, t, _)| (*i, *t));
    Some((title, parent))
}

/// Whether `categories` holds `category` or one of its subcategories (`hasCategory`).
pub(crate) fn has(categories: &[String], category: &str) -> bool {
    categories
        .iter()
        .any(|c| c == category || TABLE.iter().any(|(i, _, p)| *p == Some(category) && i == c))
}

#[cfg(test)]
mod tests {
    #[test]
    fn subcategories_name_their_parent() {
        assert_eq!(
            super::lookup("web"),
            Some(("Web Server", Some(("observability", "Observability"))))
        );
        assert!(super::has(&["web".into()], "observability"));
        assert!(!super::has(&["web".into()], "security"));
        assert!(super::lookup("nonsense").is_none());
    }
}
