// Long file: the build request, its log stream and the cleanup of a failed build are one protocol with Docker.
//! Image building, pulling and cleanup: [`ImageBuilder`] for [`Docker`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::BuildInfoAux;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, CreateImageOptionsBuilder, ListImagesOptionsBuilder,
    PruneImagesOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use otturnaut_core::traits::{BuildRequest, ImageBuilder, KEPT_PREFIX, LIVE_PREFIX, Pruned};
use otturnaut_core::{
    AppId, DeployEvent, DeploymentId, Error, EventSink, ImageRef, MAX_LOG_LINE, ManagedImage, Result, labels,
};
use tokio::sync::mpsc;

use super::buildkit::{Builder, MAX_SOLVE_CONTEXT, Progress};
use super::{Docker, TAIL_LINES, Tail, context, is_not_found};

#[async_trait]
impl ImageBuilder for Docker {
    async fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<ImageRef> {
        let tag = req.tag();
        let attempts = async {
            match self.build_tagged(req, tag.as_str(), events).await {
                Err(Error::BuildFailed { detail, .. }) if is_cache_race(&detail) => {
                    events.warn(format!("a cached layer was removed while {tag} was being built; building it again"));
                    self.build_tagged(req, tag.as_str(), events).await
                }
                other => other,
            }
        };
        let outcome = match tokio::time::timeout(req.timeout, attempts).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Timeout { operation: format!("building image {tag}"), after: req.timeout }),
        };
        if outcome.is_err() {
            // A build cut short may still have tagged its image (the daemon
            // finished just as we gave up): a failed build leaves no tag.
            if let Err(e) = self.remove_image(&tag).await {
                tracing::warn!(%tag, error = %e, "could not remove the image of a failed build");
                events.warn(format!("could not remove image {tag} of the failed build: {e}"));
            }
        }
        outcome.map(|()| tag)
    }

    async fn ensure_image(&self, reference: &ImageRef, tag: &ImageRef, events: &EventSink) -> Result<()> {
        match self.client.inspect_image(reference.as_str()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => self.pull(reference, events).await?,
            Err(e) => return Err(self.error(format!("inspecting image {reference}"), e)),
        }
        self.tag_image(reference.as_str(), tag).await
    }

    async fn tag_image(&self, image: &str, tag: &ImageRef) -> Result<()> {
        let tag = tag.as_str();
        let (repo, name) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
        let options = TagImageOptionsBuilder::default().repo(repo).tag(name).build();
        self.client
            .tag_image(image, Some(options))
            .await
            .map_err(|e| self.error(format!("tagging {image} as {tag}"), e))
    }

    async fn remove_image(&self, image: &ImageRef) -> Result<()> {
        let options = RemoveImageOptionsBuilder::default().force(false).build();
        match self.client.remove_image(image.as_str(), Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.error(format!("removing image {image}"), e)),
        }
    }

    async fn list_images(&self, app: Option<&AppId>) -> Result<Vec<ManagedImage>> {
        let pattern = match app {
            Some(app) => format!("otturnaut-{app}"),
            None => "otturnaut-*".to_owned(),
        };
        let filters = HashMap::from([("reference", vec![pattern])]);
        let options = ListImagesOptionsBuilder::default().filters(&filters).build();
        let images =
            self.client.list_images(Some(options)).await.map_err(|e| self.error("listing Otturnaut's images", e))?;
        let mut found: BTreeMap<(AppId, DeploymentId), ManagedImage> = BTreeMap::new();
        for image in images {
            for tag in &image.repo_tags {
                let (Some((app, deployment, kind)), Ok(tag)) = (parse_our_tag(tag), tag.parse::<ImageRef>()) else {
                    continue;
                };
                let label = |key: &str| image.labels.get(key).map(String::as_str);
                // Labels count only on an image the agent built for this very
                // release; a prebuilt image's labels are its author's.
                let ours =
                    label(labels::APP) == Some(app.as_str()) && label(labels::DEPLOYMENT) == Some(deployment.as_str());
                let entry = found.entry((app.clone(), deployment.clone())).or_insert_with(|| ManagedImage {
                    created: image.created,
                    size: image.size,
                    ..ManagedImage::bare(image.id.clone(), app, deployment)
                });
                match kind {
                    Tag::Live => {
                        entry.live = true;
                        entry.tags.insert(0, tag.clone());
                    }
                    Tag::Kept => {
                        entry.kept = true;
                        entry.tags.insert(0, tag.clone());
                    }
                    Tag::Release => {
                        entry.released = true;
                        entry.id = image.id.clone();
                        entry.created = image.created;
                        entry.size = image.size;
                        entry.tags.push(tag.clone());
                        if ours {
                            entry.commit = label(labels::COMMIT).and_then(|v| v.parse().ok());
                        }
                    }
                }
            }
        }
        Ok(found.into_values().collect())
    }

    async fn prune_dangling(&self, app: Option<&AppId>) -> Result<Pruned> {
        let mut filters = label_filters(app);
        filters.insert("dangling", vec!["true".to_owned()]);
        let options = PruneImagesOptionsBuilder::default().filters(&filters).build();
        let pruned = self
            .client
            .prune_images(Some(options))
            .await
            .map_err(|e| self.error("removing dangling images of Otturnaut's builds", e))?;
        Ok(Pruned {
            removed: pruned.images_deleted.unwrap_or_default().into_iter().filter_map(|d| d.deleted).collect(),
            freed_bytes: u64::try_from(pruned.space_reclaimed.unwrap_or_default()).unwrap_or(0),
        })
    }
}

/// The kinds of tag the agent puts on a release's image.
enum Tag {
    /// `otturnaut-{app}:{deployment}`
    Release,
    /// `otturnaut-{app}:live-{deployment}`
    Live,
    /// `otturnaut-{app}:kept-{deployment}`
    Kept,
}

fn parse_our_tag(tag: &str) -> Option<(AppId, DeploymentId, Tag)> {
    let (repo, name) = tag.rsplit_once(':')?;
    let app: AppId = repo.strip_prefix("otturnaut-")?.parse().ok()?;
    let (kind, deployment) = if let Some(d) = name.strip_prefix(LIVE_PREFIX) {
        (Tag::Live, d)
    } else if let Some(d) = name.strip_prefix(KEPT_PREFIX) {
        (Tag::Kept, d)
    } else {
        (Tag::Release, name)
    };
    Some((app, deployment.parse().ok()?, kind))
}

/// Label filters selecting containers Otturnaut manages, optionally for one app.
pub(super) fn label_filters(app: Option<&AppId>) -> HashMap<&'static str, Vec<String>> {
    let mut wanted = vec![format!("{}=true", labels::MANAGED)];
    if let Some(app) = app {
        wanted.push(format!("{}={app}", labels::APP));
    }
    HashMap::from([("label", wanted)])
}

impl Docker {
    async fn build_tagged(&self, req: &BuildRequest, tag: &str, events: &EventSink) -> Result<()> {
        let dockerfile = req.dockerfile.as_path();
        if let Err(why) = context::check_dockerfile(&req.context_dir, dockerfile) {
            return Err(Error::BuildFailed {
                detail: format!(
                    "no usable Dockerfile at {} in the source tree {}: {why}",
                    req.dockerfile,
                    req.context_dir.display()
                ),
                log_tail: Vec::new(),
            });
        }
        let context_dir = req.context_dir.clone();
        let packing = || format!("packing the build context {}", req.context_dir.display());
        let rules = {
            let (dir, file) = (context_dir.clone(), dockerfile.to_path_buf());
            tokio::task::spawn_blocking(move || context::ignore_rules(&dir, &file))
                .await
                .map_err(|e| Error::failed(packing(), e))??
        };

        let builder = self.builder().await;
        let mut log = BuildLog::new(events).redacting(req);
        match (&builder, req.build_secrets.is_empty()) {
            (Builder::BuildKit, true) => log.line("building with BuildKit"),
            (Builder::BuildKit, false) => {
                log.line("building with BuildKit, serving build secrets (step output is not streamed on this path)")
            }
            (Builder::Legacy { why }, true) => log.line(&format!("building with the legacy builder: {why}")),
            (Builder::Legacy { why }, false) => {
                return Err(Error::BuildFailed {
                    detail: format!("build secrets need BuildKit, which this daemon does not offer: {why}"),
                    log_tail: Vec::new(),
                });
            }
        }

        let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let tar_task = tokio::task::spawn_blocking(move || {
            let result = context::write_tar(&context_dir, &rules, tx.clone());
            if let Err(e) = &result {
                // Fail the request body, so the daemon never builds a
                // truncated context.
                let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        if !req.build_secrets.is_empty() {
            let mut context = Vec::new();
            while let Some(chunk) = rx.recv().await {
                let chunk = chunk.map_err(|e| Error::failed(packing(), e))?;
                if context.len() + chunk.len() > MAX_SOLVE_CONTEXT {
                    return Err(Error::failed(
                        packing(),
                        format!("a build with secrets takes a context of at most {MAX_SOLVE_CONTEXT} bytes"),
                    ));
                }
                context.extend_from_slice(&chunk);
            }
            tar_task.await.map_err(|e| Error::failed(packing(), e))?.map_err(|e| Error::failed(packing(), e))?;
            return match self.solve_with_secrets(req, tag, context).await {
                Ok(()) => self.check_tagged(tag, log).await,
                Err(Error::BuildFailed { detail, log_tail }) => {
                    Err(Error::BuildFailed { detail: log.redact(detail), log_tail })
                }
                Err(other) => Err(other),
            };
        }
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));

        let build_args: HashMap<&str, &str> = req.build_args.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(req.dockerfile.as_str())
            .t(tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&build_args)
            .labels(&image_labels(req));
        if builder == Builder::BuildKit {
            // Any unique id: it names this build's session with the daemon.
            let session = DeploymentId::generate().to_string();
            options = options.version(BuilderVersion::BuilderBuildKit).session(&session);
        }
        let options = options.build();
        let mut progress = Progress::default();
        // bollard's request timeout runs until the daemon answers, which it
        // does only once the whole context is uploaded: ours is the limit.
        let client = self.client.clone().with_timeout(req.timeout);
        let mut stream = client.build_image(options, None, Some(bollard::body_try_stream(body)));
        let mut failure = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = &info.stream {
                        log.text(text);
                    }
                    if let Some(status) = &info.status {
                        log.status(info.id.as_deref(), status, info.progress_detail.is_some());
                    }
                    if let Some(BuildInfoAux::BuildKit(status)) = &info.aux {
                        progress.feed(status, &mut log);
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(stream);
        log.flush();

        if let Some(e) = failure {
            // A packing error shows up here as a broken request: say what
            // really went wrong.
            if let Ok(Ok(Err(pack))) = tokio::time::timeout(Duration::from_secs(5), tar_task).await {
                return Err(Error::failed(packing(), pack));
            }
            return Err(match e {
                BollardError::DockerStreamError { error } => Error::BuildFailed {
                    detail: otturnaut_core::cut_line(log.redact(error), MAX_LOG_LINE),
                    log_tail: log.into_tail(),
                },
                BollardError::DockerResponseServerError { status_code, message } => Error::BuildFailed {
                    detail: log.redact(format!("Docker refused the build ({status_code}): {message}")),
                    log_tail: log.into_tail(),
                },
                other => self.error(format!("building image {tag}"), other),
            });
        }
        match tar_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::failed(packing(), e)),
            Err(e) => return Err(Error::failed(packing(), e)),
        }
        self.check_tagged(tag, log).await
    }

    /// The legacy builder reports some failures only by not tagging.
    async fn check_tagged(&self, tag: &str, log: BuildLog<'_>) -> Result<()> {
        match self.client.inspect_image(tag).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::BuildFailed {
                detail: format!("the build ended without producing image {tag}"),
                log_tail: log.into_tail(),
            }),
            Err(e) => Err(self.error(format!("inspecting built image {tag}"), e)),
        }
    }

    async fn pull(&self, reference: &ImageRef, events: &EventSink) -> Result<()> {
        let (name, tag) = split_reference(reference.as_str());
        let mut options = CreateImageOptionsBuilder::default().from_image(name);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let mut stream = self.client.create_image(Some(options.build()), None, None);
        let mut log = BuildLog::new(events);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(status) = &info.status {
                        log.status(info.id.as_deref(), status, info.progress_detail.is_some());
                    }
                }
                Err(e) => {
                    let detail = match e {
                        BollardError::DockerStreamError { error } => error,
                        BollardError::DockerResponseServerError { message, .. } => message,
                        other => return Err(self.error(format!("pulling image {reference}"), other)),
                    };
                    return Err(Error::failed(
                        format!("pulling image {reference}"),
                        format!("{detail} (the image is not present locally either)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The legacy builder's failures when an untagged cache layer it chose is
/// deleted under it: removing an image also removes its untagged parents,
/// which another build may be reusing at that moment. A second build no
/// longer finds that layer in the cache and succeeds.
fn is_cache_race(detail: &str) -> bool {
    detail.contains("unknown parent image ID")
        || (detail.contains("failed to get digest") && detail.contains("no such file or directory"))
        || detail.contains("No such image: sha256:")
}

/// Splits a reference into what `/images/create` wants: the name (with the
/// digest, if any) and a tag. Without one Docker would pull every tag, so a
/// bare name means `latest`.
fn split_reference(reference: &str) -> (&str, Option<&str>) {
    if reference.contains('@') {
        return (reference, None);
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (&reference[..last_slash + i], Some(&reference[last_slash + i + 1..])),
        None => (reference, Some("latest")),
    }
}

pub(super) fn image_labels(req: &BuildRequest) -> HashMap<&'static str, String> {
    let created = req.deployment.created().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    HashMap::from([
        (labels::MANAGED, "true".to_owned()),
        (labels::APP, req.app.to_string()),
        (labels::DEPLOYMENT, req.deployment.to_string()),
        (labels::REPO, req.repo.redacted()),
        (labels::COMMIT, req.commit.to_string()),
        (labels::CREATED, created.to_string()),
    ])
}

/// The shortest build-arg or secret value hidden from the build log.
pub const MIN_REDACTED: usize = 4;

/// Turns the daemon's output chunks into whole lines: `BuildLog` events,
/// and a tail kept for the error of a failed build.
///
/// A build step controls its output: a line is at most [`MAX_LOG_LINE`]
/// bytes (longer ones are split), so the unfinished line held here is
/// bounded, and each chunk is scanned once (only the new bytes), never the
/// whole unfinished line again.
pub(super) struct BuildLog<'a> {
    events: &'a EventSink,
    partial: String,
    tail: Tail,
    /// Values no line may show, longest first.
    secrets: Vec<String>,
}

impl<'a> BuildLog<'a> {
    pub(super) fn new(events: &'a EventSink) -> Self {
        BuildLog { events, partial: String::new(), tail: Tail::new(TAIL_LINES), secrets: Vec::new() }
    }

    /// Shows `***` for the build args' and secrets' values: BuildKit names
    /// a step by its command with the args expanded (`RUN echo s3cr3t`), and
    /// its errors quote it. Values under [`MIN_REDACTED`] characters are
    /// left alone: replacing every `1` would garble the log, and a secret
    /// that short is none.
    pub(super) fn redacting(mut self, req: &BuildRequest) -> Self {
        let values = req.build_args.values().chain(req.build_secrets.values()).map(|s| s.expose());
        self.secrets = values.filter(|v| v.chars().count() >= MIN_REDACTED).map(str::to_owned).collect();
        self.secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
        self
    }

    pub(super) fn redact(&self, mut text: String) -> String {
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), otturnaut_core::REDACTED);
            }
        }
        text
    }

    pub(super) fn text(&mut self, chunk: &str) {
        let mut rest = chunk;
        while let Some(end) = rest.find('\n') {
            self.append(&rest[..end]);
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
            rest = &rest[end + 1..];
        }
        self.append(rest);
    }

    /// Adds to the unfinished line, emitting it whenever it reaches the cap.
    fn append(&mut self, mut text: &str) {
        while self.partial.len() + text.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE - self.partial.len();
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.partial.push_str(&text[..cut]);
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
            text = &text[cut..];
        }
        self.partial.push_str(text);
    }

    fn status(&mut self, id: Option<&str>, status: &str, has_progress: bool) {
        // Download progress arrives many times a second: the line that
        // starts each phase is enough.
        if has_progress && (status == "Downloading" || status == "Extracting") {
            return;
        }
        match id {
            Some(id) if !id.is_empty() => self.line(&format!("{id}: {status}")),
            _ => self.line(status),
        }
    }

    pub(super) fn line(&mut self, raw: &str) {
        // A carriage return redraws a terminal line: keep what was drawn last.
        let line = raw.trim_end_matches(['\n', '\r']);
        let line = line.rsplit('\r').next().unwrap_or(line).trim_end();
        if line.is_empty() {
            return;
        }
        let line = otturnaut_core::cut_line(self.redact(line.to_owned()), MAX_LOG_LINE);
        self.tail.push(line.clone());
        self.events.emit(DeployEvent::BuildLog { line });
    }

    pub(super) fn flush(&mut self) {
        let rest = std::mem::take(&mut self.partial);
        self.line(&rest);
    }

    fn into_tail(self) -> Vec<String> {
        self.tail.into_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vanished_cache_layers_are_recognised_from_the_daemons_words() {
        assert!(is_cache_race(
            "failed to export image: failed to set parent sha256:a0b4: unknown parent image ID sha256:a0b4"
        ));
        assert!(is_cache_race(
            "failed to get digest sha256:9b8c: open /var/lib/docker/image/overlay2/imagedb/content/sha256/9b8c: no such file or directory"
        ));
        assert!(!is_cache_race("The command '/bin/sh -c make' returned a non-zero code: 2"));
        assert!(!is_cache_race("COPY failed: file not found in build context: no such file or directory"));
    }

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(split_reference("nginx"), ("nginx", Some("latest")));
        assert_eq!(split_reference("nginx:1.25"), ("nginx", Some("1.25")));
        assert_eq!(split_reference("127.0.0.1:5000/team/app"), ("127.0.0.1:5000/team/app", Some("latest")));
        assert_eq!(split_reference("127.0.0.1:5000/team/app:v2"), ("127.0.0.1:5000/team/app", Some("v2")));
        let digest = "app@sha256:0123456789abcdef0123456789abcdef";
        assert_eq!(split_reference(digest), (digest, None));
    }

    #[test]
    fn build_output_becomes_whole_lines_and_a_bounded_tail() {
        let (sink, mut rx) = EventSink::channel();
        let mut log = BuildLog::new(&sink);
        log.text("Step 1/2 : FROM scratch\n ---> Run");
        log.text("ning in abc\n\n");
        log.text("progress 10%\rprogress 100%\n");
        for i in 0..30 {
            log.text(&format!("line {i}\n"));
        }
        log.text("no newline at the end");
        log.flush();
        let mut lines = Vec::new();
        while let Ok(DeployEvent::BuildLog { line }) = rx.try_recv() {
            lines.push(line);
        }
        assert_eq!(lines[..3], ["Step 1/2 : FROM scratch", " ---> Running in abc", "progress 100%"]);
        assert_eq!(lines.last().map(String::as_str), Some("no newline at the end"));
        let tail = log.into_tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().map(String::as_str), Some("no newline at the end"));
        assert_eq!(tail.first().map(String::as_str), Some("line 11"));
    }

    #[test]
    fn build_arg_and_secret_values_are_redacted_from_lines_and_details() {
        let (sink, mut rx) = EventSink::channel();
        let req = BuildRequest {
            app: "a".parse().expect("app"),
            deployment: DeploymentId::generate(),
            context_dir: "/nonexistent".into(),
            dockerfile: Default::default(),
            build_args: BTreeMap::from([
                ("TOKEN".into(), otturnaut_core::Secret::new("s3cr3t-arg")),
                ("N".into(), otturnaut_core::Secret::new("1")),
            ]),
            build_secrets: BTreeMap::from([("npmrc".into(), otturnaut_core::Secret::new("s3cr3t-file"))]),
            repo: "https://h/o/r.git".parse().expect("repo"),
            commit: "0123456789abcdef0123456789abcdef01234567".parse().expect("sha"),
            timeout: Duration::from_secs(1),
        };
        let mut log = BuildLog::new(&sink).redacting(&req);
        log.text("[2/3] RUN echo s3cr3t-arg N=1 && cat s3cr3t-file\n");
        assert_eq!(log.redact("failed: echo s3cr3t-arg".into()), "failed: echo ***");
        let Ok(DeployEvent::BuildLog { line }) = rx.try_recv() else { panic!("a line") };
        assert_eq!(line, "[2/3] RUN echo *** N=1 && cat ***");
        assert_eq!(log.into_tail(), [line]);
    }

    #[test]
    fn output_without_newlines_is_split_into_capped_lines() {
        let (sink, mut rx) = EventSink::channel();
        let mut log = BuildLog::new(&sink);
        // 10 MiB in 1 KiB chunks: quadratic rescanning would take minutes.
        let chunk = "ab".repeat(512);
        let started = std::time::Instant::now();
        let mut got = 0usize;
        for _ in 0..10 * 1024 {
            log.text(&chunk);
            assert!(log.partial.len() <= MAX_LOG_LINE);
            while let Ok(DeployEvent::BuildLog { line }) = rx.try_recv() {
                assert!(line.len() <= MAX_LOG_LINE, "{}", line.len());
                got += line.len();
            }
        }
        log.flush();
        while let Ok(DeployEvent::BuildLog { line }) = rx.try_recv() {
            got += line.len();
        }
        assert_eq!(got, 10 * 1024 * 1024, "nothing lost while the consumer keeps up");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());

        // Multi-byte characters are never cut in half.
        let mut log = BuildLog::new(&sink);
        log.text(&"€".repeat(MAX_LOG_LINE));
        log.flush();
        while let Ok(DeployEvent::BuildLog { line }) = rx.try_recv() {
            assert!(line.len() <= MAX_LOG_LINE && line.chars().all(|c| c == '€'));
        }
    }
}
