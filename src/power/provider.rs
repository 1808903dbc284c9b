//! WAO's model endpoint provider over Redfish (`powerConsumptionEndpointProvider`): the
//! BMC names the V2 inference model that predicts its node's power. `GET
//! /redfish/v1/Systems` gives the first system; its `MachineLearningModel` resource gives
//! the model's server, name and version. Keys are matched regardless of case, as WAO's
//! decoder does.

use std::time::Duration;

use reqwest::Client;
use serde_json::Value;

use super::http;
use crate::model::node::BasicAuth;
use crate::model::url::HttpUrl;

/// The model a BMC names: its server, name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedModel {
    pub url: HttpUrl,
    pub model: String,
    pub version: String,
}

/// Asks the BMC at `bmc` which model predicts its power.
pub async fn locate(
    client: &Client,
    bmc: &HttpUrl,
    auth: Option<&BasicAuth>,
    timeout: Duration,
) -> Result<LocatedModel, String> {
    let systems = http::get_json(client, &bmc.join("/redfish/v1/Systems"), auth, timeout).await?;
    let system = first_system(&systems)?;
    let path = format!("/redfish/v1/Systems/{system}/MachineLearningModel");
    let resource = http::get_json(client, &bmc.join(&path), auth, timeout).await?;
    power_model(&resource)
}

/// The id of the first member of a `Systems` collection (the last segment of its
/// `@odata.id`).
pub fn first_system(doc: &Value) -> Result<String, String> {
    let id = field(doc, "Members")
        .and_then(|m| m.get(0))
        .and_then(|m| field(m, "@odata.id"))
        .and_then(Value::as_str)
        .ok_or("no Members[0].@odata.id in /redfish/v1/Systems")?;
    let system = id.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if system.is_empty()
        || !system
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!("implausible system id in {id:?}"));
    }
    Ok(system.to_string())
}

/// The power consumption model of a `MachineLearningModel` resource, which must be a V2
/// inference model with a server URL, a name and a version.
pub fn power_model(doc: &Value) -> Result<LocatedModel, String> {
    let model = field(doc, "PowerConsumptionModel").ok_or("no PowerConsumptionModel")?;
    let text = |key: &str| {
        field(model, key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("PowerConsumptionModel has no {key}"))
    };
    let kind = text("Type")?;
    if kind != "V2InferenceProtocol" {
        return Err(format!(
            "PowerConsumptionModel type {kind:?} is not supported (V2InferenceProtocol is)"
        ));
    }
    let url =
        HttpUrl::parse(text("Url")?).map_err(|e| format!("PowerConsumptionModel Url: {e}"))?;
    let segment = |key: &str| {
        let s = text(key)?;
        if s.contains('/') || s.contains('?') || s.contains('#') {
            return Err(format!(
                "PowerConsumptionModel {key} {s:?} is not a path segment"
            ));
        }
        Ok(s.to_string())
    };
    Ok(LocatedModel {
        url,
        model: segment("Name")?,
        version: segment("Version")?,
    })
}

/// `key` of an object, matched regardless of case.
fn field<'a>(doc: &'a Value, key: &str) -> Option<&'a Value> {
    doc.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_system() {
        let doc = json!({"@odata.id": "/redfish/v1/Systems",
            "Members": [{"@odata.id": "/redfish/v1/Systems/System.Embedded.1"}, {"@odata.id": "/redfish/v1/Systems/2"}]});
        assert_eq!(first_system(&doc).as_deref(), Ok("System.Embedded.1"));
        assert_eq!(
            first_system(&json!({"members": [{"@odata.id": "/redfish/v1/Systems/1/"}]})).as_deref(),
            Ok("1"),
            "lower-case keys and a trailing slash"
        );
        for bad in [
            json!({"Members": []}),
            json!({"Members": [{"Id": "1"}]}),
            json!({"Members": [{"@odata.id": "/redfish/v1/Systems/../x?y"}]}),
            json!([1, 2]),
        ] {
            assert!(first_system(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_power_model() {
        let doc = json!({"@odata.id": "/redfish/v1/Systems/1/MachineLearningModel",
            "PowerConsumptionModel": {"Name": "pc-r650xs", "Url": "http://10.0.0.20:8080",
                "Type": "V2InferenceProtocol", "Version": "v0.1.0"},
            "ResponseTimeModel": {"Name": "rt", "Url": "http://10.0.0.20", "Type": "V2InferenceProtocol", "Version": "v1"}});
        assert_eq!(
            power_model(&doc),
            Ok(LocatedModel {
                url: HttpUrl::parse("http://10.0.0.20:8080").unwrap(),
                model: "pc-r650xs".into(),
                version: "v0.1.0".into(),
            })
        );
        let lower = json!({"powerConsumptionModel": {"name": "p", "url": "http://m", "type": "V2InferenceProtocol", "version": "1"}});
        assert_eq!(power_model(&lower).map(|m| m.model), Ok("p".into()));
        for (bad, says) in [
            (json!({}), "no PowerConsumptionModel"),
            (
                json!({"PowerConsumptionModel": {"Name": "p", "Url": "http://m", "Type": "Fake", "Version": "1"}}),
                "not supported",
            ),
            (
                json!({"PowerConsumptionModel": {"Name": "p", "Url": "http://m", "Type": "V2InferenceProtocol"}}),
                "no Version",
            ),
            (
                json!({"PowerConsumptionModel": {"Name": "a/b", "Url": "http://m", "Type": "V2InferenceProtocol", "Version": "1"}}),
                "not a path segment",
            ),
            (
                json!({"PowerConsumptionModel": {"Name": "p", "Url": "ftp://m", "Type": "V2InferenceProtocol", "Version": "1"}}),
                "Url",
            ),
        ] {
            let e = power_model(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
