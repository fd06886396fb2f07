//! A deploy request checked as a whole: [`DeployRequest::validate`] plus
//! what only this machine can say. Every front end (CLI, daemon, a library
//! consumer) goes through [`validate`], before anything is created.

use otturnaut_core::{DeployRequest, DeploySpec, InvalidField, VolumeSource};

/// The spec of `request` for `app`, or the field at fault. Besides the
/// values, a bind mount's host path must exist here, where Docker runs.
pub fn validate(request: &DeployRequest, app: &str) -> Result<DeploySpec, InvalidField> {
    let spec = request.validate(app)?;
    for v in &spec.runtime.volumes {
        if let VolumeSource::Bind(path) = &v.source
            && let Err(e) = std::fs::metadata(path)
        {
            return Err(InvalidField::new("volumes", format!("{v}: the host path {path} cannot be used: {e}")));
        }
    }
    Ok(spec)
}
