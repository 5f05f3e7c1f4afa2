//! Well-known labels and annotations: the contract between users, the webhook and the controller.

/// Namespace label that opts a namespace in (the default `namespaceSelector`).
pub const NAMESPACE_ENABLED_LABEL: &str = "tracelight.io/enabled";
/// Pod label that opts a pod out. A label, not an annotation, so the API server's
/// `objectSelector` keeps such pods away from the webhook entirely.
pub const INJECT_LABEL: &str = "tracelight.io/inject";
/// Pod label set on every injected pod.
pub const INJECTED_LABEL: &str = "tracelight.io/injected";
/// Pod annotation naming the policy that injected it.
pub const POLICY_ANNOTATION: &str = "tracelight.io/policy";
/// Pod annotation holding the hash of the manifest-changing settings it was injected with.
pub const MANIFEST_HASH_ANNOTATION: &str = "tracelight.io/manifest-hash";
/// Pod annotation: `java`, or per container `app=java,worker=python`.
pub const LANGUAGE_ANNOTATION: &str = "tracelight.io/language";
/// Pod annotation: comma-separated names of the containers to instrument.
pub const CONTAINER_NAMES_ANNOTATION: &str = "tracelight.io/container-names";
/// Pod annotation overriding the derived `service.name`.
pub const SERVICE_NAME_ANNOTATION: &str = "tracelight.io/service-name";
/// Pod annotation written by the webhook when it skipped or degraded an injection.
pub const STATUS_ANNOTATION: &str = "tracelight.io/injection-status";
/// Pod annotation set by the injector: comma-separated names of the instrumented containers that
/// configure their own export (left alone: they are `SelfExported` for coverage).
pub const SELF_EXPORTED_ANNOTATION: &str = "tracelight.io/self-exported";
/// Pod annotation set by the injector: comma-separated names of the instrumented containers with
/// `envFrom` sources it could not see, whose export settings it therefore left alone.
pub const ENV_FROM_UNSEEN_ANNOTATION: &str = "tracelight.io/env-from-unseen";

/// Label on objects the operator owns in user namespaces, naming the owning policy.
pub const POLICY_LABEL: &str = "tracelight.io/policy";
/// Label on objects the operator owns in user namespaces (agent ConfigMaps, API-key Secrets).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tracelight";

/// Standard recommended label used for `service.name`.
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label the Deployment controller puts on ReplicaSets and their pods.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "tracelight";
