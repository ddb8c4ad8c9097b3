//! The launch layer: the wgpu device and queue, the adapter's limits, lazily built pipelines,
//! validation errors captured as values, and [`Gpu::launch`], which checks every binding
//! against the adapter's limits, writes the `meta` array, encodes one dispatch and submits it.

use std::collections::HashMap;
use std::sync::Arc;

use arkvale_core::{Error, Result};
use parking_lot::Mutex;
use wgpu::util::DeviceExt as _;

use crate::BACKEND;
use crate::kernels::{Access, COMMON, Kernel};
use crate::limits::{DispatchGrid, grid};

/// One bound buffer range (offset and size in bytes, both multiples of 4).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// First byte (a multiple of the adapter's storage offset alignment).
    pub offset: u64,
    /// Bytes bound.
    pub size: u64,
}

impl<'a> Binding<'a> {
    /// The whole buffer.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Binding {
            buffer,
            offset: 0,
            size: buffer.size(),
        }
    }
}

/// What the device learned about its adapter.
#[derive(Debug, Clone)]
pub struct AdapterReport {
    /// Adapter name as the driver reports it (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Graphics API the adapter runs on.
    pub backend: String,
    /// Device type (discrete, integrated, CPU...).
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether the adapter offers `SHADER_F16` (native f16 arithmetic in WGSL).
    pub shader_f16: bool,
    /// Largest storage-buffer binding in bytes (work is split below it).
    pub max_storage_binding: u64,
    /// Largest buffer in bytes.
    pub max_buffer: u64,
}

/// The wgpu device, its queue and its kernels.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub report: AdapterReport,
    pipelines: Mutex<HashMap<Kernel, Arc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Three distinct 16-byte buffers bound where a kernel's optional bindings are absent.
    pub dummies: [wgpu::Buffer; 3],
    /// Serializes submissions so that issue order is queue order.
    pub submit_lock: Mutex<()>,
}

impl Gpu {
    /// Opens the first adapter wgpu offers (high-performance preference; software adapters
    /// such as lavapipe included), with the adapter's own limits.
    pub fn open() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
        });
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .map_err(|e| Error::device(BACKEND, format!("no wgpu adapter (Vulkan/Metal/DX12): {e}")))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let shader_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("arkvale-wgpu"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::device(BACKEND, format!("cannot open {}: {e}", info.name)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().push(e.to_string());
        }));
        let dummies = [0, 1, 2].map(|_| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("arkvale dummy"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        });
        let report = AdapterReport {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info),
            shader_f16,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
        };
        Ok(Gpu {
            device,
            queue,
            limits,
            report,
            pipelines: Mutex::default(),
            errors,
            dummies,
            submit_lock: Mutex::new(()),
        })
    }

    /// Turns validation errors wgpu reported since the last check into an error.
    pub fn check_errors(&self, what: &str) -> Result<()> {
        let mut errs = self.errors.lock();
        if errs.is_empty() {
            return Ok(());
        }
        let msg = errs.join("; ");
        errs.clear();
        Err(Error::device(BACKEND, format!("{what}: {msg}")))
    }

    /// The pipeline of `k`, compiled on first use.
    fn pipeline(&self, k: Kernel) -> Result<Arc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>> {
        if let Some(p) = self.pipelines.lock().get(&k) {
            return Ok(p.clone());
        }
        let source = format!("{COMMON}\n{}", k.source());
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(k.entry()),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let mut entries = vec![storage_entry(0, true)];
        for (i, a) in k.bindings().iter().enumerate() {
            entries.push(storage_entry(i as u32 + 1, *a == Access::Read));
        }
        let bgl = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(k.entry()),
                entries: &entries,
            });
        let layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(k.entry()),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.entry()),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(k.entry()),
                compilation_options: Default::default(),
                cache: None,
            });
        self.check_errors(&format!("compiling kernel {k:?}"))?;
        let p = Arc::new((pipeline, bgl));
        self.pipelines.lock().insert(k, p.clone());
        Ok(p)
    }

    /// Compiles every kernel now (so that a broken shader shows at device creation).
    pub fn compile_all(&self) -> Result<()> {
        for k in Kernel::ALL {
            self.pipeline(k)?;
        }
        Ok(())
    }

    /// Checks that a binding fits the adapter's limits.
    pub fn check_binding(&self, b: &Binding<'_>, what: &str) -> Result<()> {
        let max = self.limits.max_storage_buffer_binding_size;
        if b.size > max {
            return Err(Error::device(
                BACKEND,
                format!(
                    "{what}: a binding of {} bytes exceeds the adapter's storage-binding limit \
                     of {max} bytes",
                    b.size
                ),
            ));
        }
        Ok(())
    }

    /// Dispatches `workgroups` workgroups of kernel `k` with `meta` and the `bindings` (1..),
    /// then submits.
    pub fn launch(
        &self,
        k: Kernel,
        meta: &[u32],
        bindings: &[Binding<'_>],
        workgroups: u64,
        what: &str,
    ) -> Result<()> {
        let mut enc = self.encoder();
        self.encode(&mut enc, k, meta, bindings, workgroups, what)?;
        self.submit(enc, what)?;
        Ok(())
    }

    /// A new command encoder.
    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Encodes one dispatch of `workgroups` workgroups (a linearised 2-D grid) into `enc`.
    pub fn encode(
        &self,
        enc: &mut wgpu::CommandEncoder,
        k: Kernel,
        meta: &[u32],
        bindings: &[Binding<'_>],
        workgroups: u64,
        what: &str,
    ) -> Result<()> {
        if workgroups == 0 {
            return Ok(());
        }
        let DispatchGrid { x, y } =
            grid(workgroups, self.limits.max_compute_workgroups_per_dimension).ok_or_else(
                || {
                    Error::device(
                        BACKEND,
                        format!("{what}: {workgroups} workgroups is too many"),
                    )
                },
            )?;
        self.encode_grid(enc, k, meta, bindings, (x, y), what)
    }

    /// Encodes one dispatch of an explicit `(x, y)` grid into `enc`.
    pub fn encode_grid(
        &self,
        enc: &mut wgpu::CommandEncoder,
        k: Kernel,
        meta: &[u32],
        bindings: &[Binding<'_>],
        (x, y): (u32, u32),
        what: &str,
    ) -> Result<()> {
        if x == 0 || y == 0 {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if x > max || y > max {
            return Err(Error::device(
                BACKEND,
                format!("{what}: a {x} x {y} grid exceeds {max} workgroups per dimension"),
            ));
        }
        if bindings.len() != k.bindings().len() {
            return Err(Error::device(
                BACKEND,
                format!("{what}: kernel {k:?} takes {} bindings", k.bindings().len()),
            ));
        }
        for b in bindings {
            self.check_binding(b, what)?;
        }
        let meta_bytes: &[u8] = if meta.is_empty() {
            &[0; 4]
        } else {
            bytemuck::cast_slice(meta)
        };
        let meta_buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("arkvale meta"),
                contents: meta_bytes,
                usage: wgpu::BufferUsages::STORAGE,
            });
        let p = self.pipeline(k)?;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: meta_buf.as_entire_binding(),
        }];
        for (i, b) in bindings.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size),
                }),
            });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.entry()),
            layout: &p.1,
            entries: &entries,
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(k.entry()),
                timestamp_writes: None,
            });
            pass.set_pipeline(&p.0);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
        Ok(())
    }

    /// Submits an encoder's commands; validation errors become an error.
    pub fn submit(&self, enc: wgpu::CommandEncoder, what: &str) -> Result<wgpu::SubmissionIndex> {
        let _g = self.submit_lock.lock();
        let idx = self.queue.submit([enc.finish()]);
        self.check_errors(what)?;
        Ok(idx)
    }

    /// Blocks until submission `idx` (or everything, with `None`) finished.
    pub fn wait(&self, idx: Option<wgpu::SubmissionIndex>, what: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: idx,
                timeout: None,
            })
            .map_err(|e| Error::device(BACKEND, format!("{what}: {e}")))?;
        self.check_errors(what)
    }

    /// A device buffer of `bytes` (rounded up to 4, at least 4).
    pub fn buffer(
        &self,
        bytes: u64,
        usage: wgpu::BufferUsages,
        label: &str,
    ) -> Result<wgpu::Buffer> {
        let size = bytes.max(4).div_ceil(4) * 4;
        if size > self.limits.max_buffer_size {
            return Err(Error::device(
                BACKEND,
                format!(
                    "{label}: {size} bytes exceed the adapter's buffer limit of {} bytes",
                    self.limits.max_buffer_size
                ),
            ));
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.check_errors(label)?;
        Ok(buf)
    }

    /// A read-only storage buffer holding `words` (at least one word).
    pub fn upload_words(&self, words: &[u32], label: &str) -> wgpu::Buffer {
        let bytes: &[u8] = if words.is_empty() {
            &[0; 4]
        } else {
            bytemuck::cast_slice(words)
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}
