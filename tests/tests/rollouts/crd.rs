//! The shapes of the progressive-delivery resources the examples in deploy/rollouts are, as the
//! projects define them: Argo Rollouts' `argoproj.io/v1alpha1` AnalysisTemplate
//! (`pkg/apis/rollouts/v1alpha1/analysis_types.go`) and Flagger's `flagger.app/v1beta1`
//! MetricTemplate and Canary (`pkg/apis/flagger/v1beta1/{metric,canary}.go`). Every struct denies
//! unknown fields, so a misspelt or misplaced field fails; the Kubernetes types inside them
//! (ObjectMeta, JobSpec) ignore unknown fields, so the test also serialises each object back and
//! checks that no key of the YAML was dropped. Fields of the real types that no example uses and
//! that these tests never read are kept as `serde_json::Value`, so that they are accepted without
//! being modelled.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{batch::v1::JobSpec, core::v1::LocalObjectReference},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

type Any = Option<Value>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisTemplate {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: AnalysisTemplateSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    pub metrics: Vec<Metric>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Argument>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement_retention: Any,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Argument {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Any,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metric {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_success_limit: Option<IntOrString>,
    pub provider: MetricProvider,
}

/// Exactly one of these is set.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricProvider {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusMetric>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web: Option<WebMetric>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobMetric>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kayenta: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datadog: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wavefront: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_relic: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_watch: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graphite: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub influxdb: Any,
    #[serde(rename = "skywalking", skip_serializing_if = "Option::is_none")]
    pub sky_walking: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Any,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusMetric {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Any,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<WebMetricHeader>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebMetric {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<WebMetricHeader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// A Kubernetes JSONPath template, `{$}` by default.
    #[serde(rename = "jsonPath", skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(rename = "jsonBody", skip_serializing_if = "Option::is_none")]
    pub json_body: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Any,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebMetricHeader {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMetric {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    pub spec: JobSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricTemplate {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: MetricTemplateSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricTemplateSpec {
    pub provider: MetricTemplateProvider,
    pub query: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricTemplateProvider {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Canary {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CanarySpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanarySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_server: Option<String>,
    pub target_ref: CrossNamespaceObjectReference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_ref: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_ref: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ref: Any,
    pub service: CanaryService,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_analysis: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_on_deletion: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CrossNamespaceObjectReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The Service Flagger generates; only the ports are modelled, the mesh-specific fields are
/// accepted as they are.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryService {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_discovery: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_refs: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_policy: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_name: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apex: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Any,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Any,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryAnalysis {
    pub interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_weight: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_weight: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_weight: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_weights: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_weight_promotion: Option<i64>,
    pub threshold: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_ready_threshold: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_ready_threshold: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Any,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<CanaryMetric>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<CanaryWebhook>,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Any,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_affinity: Any,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryMetric {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_range: Option<CanaryThresholdRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<CrossNamespaceObjectReference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_variables: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryThresholdRange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// `type` is one of Flagger's hook types.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryWebhook {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mute_alert: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

/// Flagger's hook types (`HookType`).
pub const HOOK_TYPES: &[&str] = &[
    "confirm-rollout",
    "pre-rollout",
    "rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
    "post-rollout",
    "rollback",
    "event",
];
