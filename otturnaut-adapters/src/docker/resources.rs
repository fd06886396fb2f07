//! Named volumes and networks a release needs, made before its container.
//!
//! Both outlive releases: a volume holds the app's data across redeploys
//! and rollbacks, a network is shared with other containers. Neither is
//! ever removed by a deploy, a retire or `reconcile`; only
//! `undeploy --volumes` removes the volumes labelled with the app.

use std::collections::HashMap;

use bollard::models::{NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder};
use otturnaut_core::{AppId, Error, NetworkName, Result, RuntimeOptions, VolumeSource, labels};

use super::{Docker, is_not_found};

impl Docker {
    /// Creates the named volumes (labelled with `app`) and networks of
    /// `options` that do not exist yet. Existing ones are used as they are.
    pub(super) async fn ensure_resources(&self, app: &AppId, options: &RuntimeOptions) -> Result<()> {
        for volume in &options.volumes {
            let VolumeSource::Named(name) = &volume.source else {
                continue;
            };
            let request = VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(HashMap::from([
                    (labels::MANAGED.to_owned(), "true".to_owned()),
                    (labels::APP.to_owned(), app.to_string()),
                ])),
                ..Default::default()
            };
            // Creating a volume that exists returns it unchanged.
            self.client
                .create_volume(request)
                .await
                .map_err(|e| self.error(format!("creating volume {name} for {app}"), e))?;
        }
        for network in &options.networks {
            self.ensure_network(network).await?;
        }
        Ok(())
    }

    async fn ensure_network(&self, name: &NetworkName) -> Result<()> {
        match self.client.inspect_network(name.as_str(), None).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.error(format!("inspecting network {name}"), e)),
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([(labels::MANAGED.to_owned(), "true".to_owned())])),
            ..Default::default()
        };
        match self.client.create_network(request).await {
            Ok(_) => Ok(()),
            // Another deploy made it meanwhile.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(self.error(format!("creating network {name}"), e)),
        }
    }

    /// Removes every named volume Otturnaut created for `app` (by its
    /// labels), returning their names. Fails on a volume still in use.
    pub async fn remove_app_volumes(&self, app: &AppId) -> Result<Vec<String>> {
        let filters =
            HashMap::from([("label", vec![format!("{}=true", labels::MANAGED), format!("{}={app}", labels::APP)])]);
        let options = ListVolumesOptionsBuilder::default().filters(&filters).build();
        let listed = self
            .client
            .list_volumes(Some(options))
            .await
            .map_err(|e| self.error(format!("listing the volumes of {app}"), e))?;
        let mut removed = Vec::new();
        for volume in listed.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptionsBuilder::default().force(false).build();
            match self.client.remove_volume(&volume.name, Some(options)).await {
                Ok(()) => removed.push(volume.name),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(Error::failed(
                        format!("removing volume {} of {app}", volume.name),
                        format!("{} (removed before it: {removed:?})", self.error("", e)),
                    ));
                }
            }
        }
        Ok(removed)
    }
}
