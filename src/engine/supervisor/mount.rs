//! The sandbox's root: the image's layers, the attachment layer and the run's upper dir,
//! mounted in the supervisor's private mount namespace (or, with a user namespace, laid
//! out for the init to mount inside it). Nothing mounted here outlives the supervisor.

use super::resources::ResourceError;
use super::scratch::ScratchError;
use super::{Mounted, Run};
use crate::engine::attachlayer::AttachLayerError;
use crate::engine::overlay::Overlay;
use crate::engine::sandbox;
use crate::engine::store::{ImageRow, Layout, HOST_LAYER};
use crate::engine::{attachlayer, hostview, idmap, inspect, layers};
use std::io;
use std::path::{Path, PathBuf};

/// Why the sandbox's root could not be mounted (or laid out).
#[derive(Debug, thiserror::Error)]
pub(super) enum MountError {
    #[error("mount point dir {}: {source}", path.display())]
    PointsDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tmpfs for mount points at {}: {source}", path.display())]
    PointsTmpfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount point {}: {source}", path.display())]
    Point {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the host image mask: {0}")]
    HostMask(#[source] io::Error),
    #[error("cannot mount the host view: {0}")]
    HostView(#[source] io::Error),
    #[error("cannot mount the overlay root ({layers} layers): {source}")]
    OverlayRoot {
        layers: usize,
        #[source]
        source: io::Error,
    },
    /// A layer needed twice in the chain could not be copied (see `copy_layer`).
    #[error("copying attachment layer {id}: {source}")]
    CopyLayer {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    AttachLayer(#[from] AttachLayerError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error(transparent)]
    Resources(#[from] ResourceError),
}

impl Run {
    /// Mounts the image's layers plus a fresh upper dir at `<store>/mnt/root`.
    ///
    /// Every directory made on the store's disk is a journaled metadata operation, which
    /// costs from tens of microseconds to a millisecond when the disk is busy. So the mount
    /// points go on a tmpfs private to this supervisor's mount namespace, and the upper and
    /// work dirs come from a spare pair (`claim_scratch`).
    pub(super) fn mount_root(&mut self, image: &ImageRow) -> Result<Mounted, MountError> {
        let points = self.layout.root.join("mnt");
        if !points.is_dir() {
            std::fs::create_dir_all(&points).map_err(|source| MountError::PointsDir {
                path: points.clone(),
                source,
            })?;
        }
        sandbox::mount_points_tmpfs(&points).map_err(|source| MountError::PointsTmpfs {
            path: points.clone(),
            source,
        })?;
        let userns = self.job.userns;
        let mut mounted = Mounted {
            root: points.join("root"),
            mounts: vec![points.clone()],
            userns: None,
            made: Vec::new(),
        };
        let mut dirs = vec![mounted.root.clone()];
        if userns.is_some() {
            dirs.push(points.join("store"));
        }
        self.claim_scratch()?;
        let (upper, work) = self.layer_dirs(&points, &mut mounted)?;
        let mut lowers = Vec::new();
        let mut host = false;
        for layer in &image.layers {
            if layer == HOST_LAYER {
                let mask = self.layout.layer_dir(HOST_LAYER);
                if !mask.exists() {
                    layers::build_host_mask(&mask, &self.data_dir).map_err(MountError::HostMask)?;
                }
                // The empty dir is on the tmpfs: not under `/`'s filesystem.
                dirs.extend([points.join("empty"), points.join("host")]);
                if userns.is_some() {
                    dirs.push(points.join("hostfs"));
                }
                host = true;
                lowers.push(mask);
                lowers.push(points.join("host"));
            } else {
                lowers.push(self.layout.layer_dir(layer));
            }
        }
        for d in &dirs {
            std::fs::create_dir(d).map_err(|source| MountError::Point {
                path: d.clone(),
                source,
            })?;
        }
        self.attachment_layer(image, &mut lowers)?;
        let plan = RootPlan {
            points: &points,
            lowers: &lowers,
            upper: &upper,
            work: &work,
            host,
            store: &self.layout.root,
        };
        if let Some(range) = userns {
            mounted.userns = Some(self.userns_root(range, &plan));
            mounted.root = PathBuf::from("root");
            return Ok(mounted);
        }
        plan.mount(&mut mounted)?;
        Ok(mounted)
    }

    /// The attachment layer, on top of `lowers`, for a request with files.
    fn attachment_layer(
        &mut self,
        image: &ImageRow,
        lowers: &mut Vec<PathBuf>,
    ) -> Result<(), MountError> {
        if let Some(files) = self.job.request.files.as_ref().filter(|f| !f.is_empty()) {
            let view = inspect::View::new(&self.layout, &image.layers);
            let mut id = attachlayer::ensure(&self.layout, &view, files, &self.job.blobs)?;
            if image.layers.first() == Some(&id) {
                // Already the top layer (the same files attached again): nothing to add.
            } else {
                if image.layers.contains(&id) {
                    // Deeper in the chain (something above may hide its files): overlayfs
                    // takes a directory only once, so the top gets a hard-linked copy.
                    id = copy_layer(&self.layout, &id)?;
                }
                lowers.insert(0, self.layout.layer_dir(&id));
                self.attach = Some(id);
            }
        }
        Ok(())
    }

    /// What the init of a user namespace mounts itself (see `sandbox::Userns`).
    fn userns_root(&self, range: idmap::Range, plan: &RootPlan) -> sandbox::Userns {
        let points = plan.points;
        // The init mounts all of it inside its user namespace, by paths relative to the
        // mount points: the store's own, seen through the idmapped copy at `store`, and
        // the host view.
        let rel = |p: &Path| -> PathBuf {
            match (p.strip_prefix(points), p.strip_prefix(&self.layout.root)) {
                (Ok(point), _) => point.to_path_buf(),
                (_, Ok(inside)) => Path::new("store").join(inside),
                _ => p.to_path_buf(),
            }
        };
        let mut idmapped = vec![(self.layout.root.clone(), PathBuf::from("store"))];
        if plan.host {
            idmapped.push((PathBuf::from("/"), PathBuf::from("hostfs")));
        }
        if let Some(fs) = &self.res.layer {
            idmapped.push((fs.mount.clone(), PathBuf::from("layer")));
        }
        sandbox::Userns {
            range,
            points: points.to_path_buf(),
            idmapped,
            host: plan.host,
            lowers: plan.lowers.iter().map(|l| rel(l)).collect(),
            upper: rel(plan.upper),
            work: rel(plan.work),
        }
    }
}

/// What the root is made of: its layers, upper and work dir, and the mount points.
#[derive(Clone, Copy)]
struct RootPlan<'a> {
    points: &'a Path,
    lowers: &'a [PathBuf],
    upper: &'a Path,
    work: &'a Path,
    /// The image is on the `host` base: its view is mounted first.
    host: bool,
    /// The store's root, which no rootless host view may hold (see `hostview`).
    store: &'a Path,
}

impl RootPlan<'_> {
    /// Mounts the host view (for the `host` base) and the overlay root, in the
    /// supervisor's own mount namespace.
    fn mount(&self, mounted: &mut Mounted) -> Result<(), MountError> {
        let RootPlan {
            points,
            lowers,
            upper,
            work,
            host,
            store,
        } = *self;
        let rootless = crate::rootless::active();
        if host && rootless {
            return self.mount_rootless_host(mounted, store);
        }
        if host {
            // overlayfs refuses layers that overlap, and the store lies under `/`: a
            // read-only overlay of `/` (over an empty tmpfs dir) is a separate filesystem
            // that can then sit under store layers.
            let view = points.join("host");
            Overlay {
                lowers: &[PathBuf::from("/"), points.join("empty")],
                upper: None,
                userxattr: false,
            }
            .mount(&view)
            .map_err(MountError::HostView)?;
            mounted.mounts.push(view);
        }
        let root = mounted.root.clone();
        Overlay {
            lowers,
            upper: Some((upper, work)),
            userxattr: rootless,
        }
        .mount(&root)
        .map_err(|source| MountError::OverlayRoot {
            layers: lowers.len(),
            source,
        })?;
        mounted.mounts.push(root);
        Ok(())
    }
}

impl RootPlan<'_> {
    /// The `host` image rootless: the skeleton of `/` under the root overlay, then one
    /// overlay per host directory over it (see `hostview`). Each view's upper dir is the
    /// directory of the same path in the run's upper dir, made before anything is mounted
    /// and removed again at commit when the run left it empty (`Mounted::made`).
    fn mount_rootless_host(&self, mounted: &mut Mounted, store: &Path) -> Result<(), MountError> {
        let skeleton = self.points.join("host");
        let above: Vec<PathBuf> = self
            .lowers
            .iter()
            .take_while(|l| **l != skeleton)
            .cloned()
            .collect();
        let avoid = [store.to_path_buf()];
        let views = hostview::plan(&skeleton, &above, &avoid).map_err(MountError::HostView)?;
        crate::log::trace(&format!("host view planned: {} views", views.len()));
        let mut points = Vec::new();
        for (i, view) in views.iter().enumerate() {
            let upper = self.upper.join(&view.rel);
            let work = self.work.join(format!("view{i}"));
            for dir in upper.ancestors().take(view.rel.components().count()) {
                if !dir.exists() {
                    mounted.made.push(dir.to_path_buf());
                }
            }
            std::fs::create_dir_all(&upper)
                .and_then(|_| std::fs::create_dir_all(&work))
                .map_err(MountError::HostView)?;
            points.push((upper, work));
        }
        // Deepest first, as they are removed.
        mounted
            .made
            .sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        let root = mounted.root.clone();
        Overlay {
            lowers: self.lowers,
            upper: Some((self.upper, self.work)),
            userxattr: true,
        }
        .mount(&root)
        .map_err(|source| MountError::OverlayRoot {
            layers: self.lowers.len(),
            source,
        })?;
        mounted.mounts.push(root.clone());
        crate::log::trace("root mounted");
        for (view, (upper, work)) in views.iter().zip(&points) {
            let at = root.join(&view.rel);
            Overlay {
                lowers: &view.lowers,
                upper: Some((upper, work)),
                userxattr: true,
            }
            .mount(&at)
            .map_err(|e| {
                MountError::HostView(io::Error::new(
                    e.kind(),
                    format!("/{}: {e}", view.rel.display()),
                ))
            })?;
            mounted.mounts.push(at);
        }
        Ok(())
    }
}

/// A hard-linked copy of layer `id` under a new id, for a layer needed twice in one chain.
fn copy_layer(layout: &Layout, id: &str) -> Result<String, MountError> {
    layers::copy_layer(layout, id).map_err(|source| MountError::CopyLayer {
        id: id.to_string(),
        source,
    })
}
