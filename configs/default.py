r"""python -m seg_jax.main --config=configs/default.py --workdir=/tmp/seg_default

Asymmetric U-Net (SE encoder, ASPP bottleneck; 170k parameters) on the synthetic aerial scenes at
64x96, batch 8, 800 steps, sized to finish on a 2-core CPU in at most 5 minutes.
Measured on a 2-core CPU, 2026-11-26: on a fresh clone, the README quickstart command (new
virtual environment, `pip install -e .` with pip's download cache warm, then this command) took
1m37s wall on an otherwise idle machine, of which this command 1m08s; the command alone took
3m33s when the machine was shared with other jobs (load average about 5).
Val mIoU 0.689, pixel accuracy 0.942 at step 800 (the same in both runs). Learning curve, val
mIoU at steps 200/400/600/800: 0.551/0.658/0.683/0.689 (train loss 1.51 at step 50, 0.23 at
step 800). Again on 2026-12-06, after the up-convolutions became matmuls and with YNNPACK
fusions off (`train.xla_cpu_ynnpack`), empty seg_jax caches, nothing else running (load
1.8-2.1, the run itself): 1m05s, val mIoU 0.522/0.650/0.685/0.692 at steps 200/400/600/800, pixel
accuracy 0.943.

Every other config starts from this one (`get_config()` here defines every field the code reads)
and changes only what it must. Override any field from the command line, e.g.
`--config.train.num_steps=100`; a misspelled field fails before anything runs.
"""

import os

import ml_collections
from ml_collections import config_dict


def cache_folder(name: str) -> str:
  """A per-user cache folder of seg_jax ($XDG_CACHE_HOME or ~/.cache); safe to delete."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return os.path.join(root, "seg_jax", name)


def get_augment_config() -> ml_collections.ConfigDict:
  """Augmentation run inside the train step (probabilities and ranges)."""
  a = ml_collections.ConfigDict()
  a.enabled = True  # False: train on the images as stored.
  a.hflip = True  # Random horizontal flip.
  a.vflip = True  # Random vertical flip (aerial images have no "up").
  a.rot90 = True  # Random multiple-of-90-degree rotation (square crops only keep the shape).
  a.scale_min = 1.0  # Random rescale factor range, followed by a crop back to size.
  a.scale_max = 1.0
  a.rotate_degrees = 0.0  # Small random rotation, +/- degrees (0 = off).
  a.brightness = 0.1  # Colour jitter strengths (0 = off).
  a.contrast = 0.1
  a.saturation = 0.1
  a.hue = 0.02
  a.noise_std = 0.0  # Std of additive Gaussian noise in [0, 255] units.
  return a


def asym_unet_kwargs(*, widths, blocks, decoder_widths, aspp_features, se_reduction,
                     aspp_rates=(2, 4, 6)) -> dict:
  """model.kwargs of asym_unet: every switch of its ablations, one conv per decoder stage."""
  return dict(
      backbone_kwargs=dict(widths=widths, blocks=blocks, se=True, se_reduction=se_reduction),
      neck="aspp",
      neck_kwargs=dict(features=aspp_features, rates=aspp_rates),
      decoder_kwargs=dict(widths=decoder_widths, blocks=1, se=False, skip_se=False,
                          se_reduction=se_reduction),
  )


def get_config() -> ml_collections.ConfigDict:
  """Default config: asym_unet on synthetic_aerial, small enough for a 2-core CPU."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Root of every random key (init, augmentation, dropout, data order).

  config.model = m = ml_collections.ConfigDict()
  # A name from seg_jax.models.available(): a segmentation model, or a classifier (e.g. "mlp",
  # "simple_cnn") trained on data.labels = "majority" through
  # seg_jax.models.segmentation.DenseFromClassifier.
  m.name = "asym_unet"
  # A name from seg_jax.models.ablations(name), laid over kwargs ("" = none), e.g. "asym_se".
  m.ablation = ""
  m.num_classes = 0  # 0 = number of classes of the dataset; otherwise must equal it.
  m.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (params and logits stay float32).
  m.param_dtype = "float32"  # Parameter dtype.
  # Initial weights of a fresh run ("" = all from the seed); a resumed run restores its own
  # checkpoint instead. A seg_jax workdir (its best checkpoint), a Keras file (.keras,
  # .weights.h5), a torch file (.pth, .pt, .safetensors) with torchvision's names, or
  # "torchvision:<model>:<weights>" / "keras:<model>:<weights>" downloaded by that library
  # (needs a network), e.g. "torchvision:resnet50:IMAGENET1K_V2", "keras:xception:imagenet".
  m.init_from = ""
  # What init_from initialises: "backbone" (a file or name holds the classifier whose
  # architecture is the backbone's, e.g. torchvision's resnet50 for backbone resnet50; its
  # classifier is skipped) or "model" (every variable; a file or name holds this very model,
  # e.g. torchvision's deeplabv3_resnet50). Arrays whose shape differs only in the class count
  # (a head) are re-initialised; anything else that does not fit is an error.
  m.init_part = "backbone"
  # Settings merged into the model's preset (seg_jax.models.create(name, **kwargs)): part names
  # and each part's kwargs. Every ablation switch of asym_unet is listed, so
  # --config.model.kwargs.backbone_kwargs.se=False or --config.model.kwargs.neck=none works.
  m.kwargs = ml_collections.ConfigDict(asym_unet_kwargs(
      widths=(8, 16, 32, 64), blocks=(1, 1, 2, 2), decoder_widths=(32, 16, 8), aspp_features=32,
      se_reduction=4))

  config.data = d = ml_collections.ConfigDict()
  # "synthetic_aerial" (generated scenes), "dubai_aerial" (a folder in the Dubai layout:
  # 'Tile N/images|masks' or 'images/' + 'masks/', paired by file stem), "folder" (the same
  # with data.palette's classes), "raster" (GeoTIFFs or any GDAL raster: images/ + masks/, or
  # train/, val/, test/ each with img/ + mask/ or images/ + masks/) or
  # "tfds:<builder>/<config>", a TFDS dataset prepared by `python -m seg_jax.data.prepare`
  # (e.g. "tfds:dubai_aerial/resized_144x256"; its size, split and palette were fixed then).
  d.name = "synthetic_aerial"
  d.root = ""  # Folder of a dubai_aerial dataset ("" for synthetic data).
  d.tfds_dir = "~/tensorflow_datasets"  # TFDS data folder that tfds: names are read from.
  # Folder datasets: JSON file of class names and mask colours in class order,
  # {"name": "#RRGGBB", ...} or a classes.json {"classes": [{"title", "color"}, ...]};
  # "" = the six Dubai classes and their colours.
  d.palette = ""
  # Mask colour of pixels that belong to no class (decoded to ignore_index); "none" when
  # every colour is a class, e.g. a dataset that labels a class in black.
  d.ignore_color = "#000000"
  d.image_size = (64, 96)  # (H, W) the images are resized (or the scenes generated) to.
  # "tile" | "image" | "random_patch" (random_patch leaks; dubai_aerial only). A raster folder of
  # images/ + masks/ takes "image"; one split into train/, val/, test/ folders does not read it.
  d.split = "tile"
  # "resize" to image_size, "patches" of patch_size, or (rasters) "windows": random windows.
  d.prep = "resize"
  d.patch_size = 256  # Patch (and window) side when prep = "patches" (or "windows").
  d.patch_overlap = 0  # Overlap in pixels between neighbouring patches.
  # "pixels": each pixel is labelled with its class (segmentation). "majority": each example is
  # labelled with the majority class of its pixels, every pixel of its label map set to that
  # class, which makes a classification dataset (for a classifier model.name); an example whose
  # majority class covers less than min_purity of its pixels (ignored pixels count against it)
  # is left out, and the count left out of each split is logged (Dataset.dropped).
  d.labels = "pixels"
  d.min_purity = 0.5  # In (0, 1]: share of an example's pixels its majority class must cover.
  d.num_train = 1024  # Synthetic split sizes.
  d.num_val = 64
  d.num_test = 32
  d.seed = 0  # Seed of the synthetic scenes and of split assignment.
  # Folder datasets: train on this many examples of the train split, drawn with data.seed,
  # e.g. to study overfitting (0 = all of them; mean/std are those of the examples kept).
  # Synthetic data sets its train split's size with data.num_train instead.
  d.train_subset = 0
  # Folder where generated synthetic splits are kept, so that a later run reads them instead
  # of generating them again ("" = generate them on every run).
  d.cache_dir = cache_folder("data")
  d.ignore_index = 255  # Label value that no loss or metric counts.
  # Bad files (unreadable, unsupported type, unpaired, mismatched size, too many unknown
  # colours, no labelled pixel): "error" names the first one; "skip" leaves each out, logs it
  # and lists it in Dataset.skipped.
  d.on_bad_file = "error"
  d.max_unknown_fraction = 0.01  # Largest share of unknown mask colours before a file is bad.
  # Largest share of ignored mask pixels (ignore colour or unknown colours; patch padding is
  # not counted) in any split of a folder dataset; above it the dataset is refused, naming the
  # most-ignored masks. The Dubai masks at full resolution: 0.61 % of the train split (17 % in
  # its most-ignored mask), 0.00 % of val, 0.01 % of test.
  d.max_ignored_fraction = 0.25
  # Raster datasets (data.name = "raster"; seg_jax/data/README.md): the image bands the model
  # reads, in this order, as 1-based band numbers or band descriptions, e.g. (4, 1, 2, 3) or
  # ("nir", "red"); () = every band of the file. Every band is read as data, whatever its colour
  # interpretation (NAIP tags its NIR band as alpha).
  d.bands = ()
  # The band numbers of red, green and blue, e.g. (1, 2, 3) for NAIP, (4, 3, 2) for Sentinel-2;
  # () when there are none. Colour jitter (augment.brightness, ...) changes only these bands and
  # is refused without them; model.init_from maps RGB weights onto them.
  d.rgb_bands = ()
  # Image nodata value for files that set none (None = the file's only): a pixel holding it in
  # any selected band (or a non-finite value) is nodata, its label ignore_index.
  d.nodata = config_dict.placeholder(float)
  # Mask nodata value for masks that set none (None = the file's only), e.g. -1 or 255: such
  # pixels get ignore_index; any other mask value outside 0..classes-1 is an error.
  d.mask_nodata = config_dict.placeholder(float)
  # Stored values are multiplied by this before anything else (e.g. 1e-4 for reflectance stored
  # as 10000 x reflectance): mean, std, augment.noise_std and the clip range are in its units.
  d.scale = 1.0
  # With prep = "windows" (rasters): random patch_size windows drawn anew each epoch, read
  # lazily from the scenes, so a scene may be larger than memory.
  d.windows_per_epoch = 512
  d.keep_on_device = False  # Keep the whole training set in accelerator memory.
  d.augment = get_augment_config()

  config.loss = l = ml_collections.ConfigDict()
  l.ce_weight = 1.0  # Weights of the summed loss terms (0 = term off).
  l.dice_weight = 0.0
  l.jaccard_weight = 0.0
  l.focal_weight = 0.0
  l.tversky_weight = 0.0
  l.label_smoothing = 0.0  # Cross-entropy label smoothing.
  # Class weights for cross-entropy and focal: "none", "inverse" or "median" frequency on the
  # training split, or "given" (class_weights below).
  l.class_weighting = "none"
  l.class_weights = (1.0,)  # Used when class_weighting = "given"; one weight per class.
  l.focal_gamma = 2.0  # Focal loss focusing exponent.
  l.tversky_alpha = 0.3  # Tversky false-positive weight.
  l.tversky_beta = 0.7  # Tversky false-negative weight.
  l.smooth = 0.0  # Additive smoothing of the Dice / Jaccard / Tversky ratios.

  config.optim = o = ml_collections.ConfigDict()
  o.name = "adamw"  # adamw | adam | sgd | lamb | lion | rmsprop.
  o.learning_rate = 3e-3  # Peak learning rate.
  o.schedule = "warmup_cosine"  # warmup_cosine | poly | constant (each after linear warmup).
  # Warmup length in optimizer updates; a run not longer than it (a smoke test with a small
  # train.num_steps) warms up over half the run instead, with a warning.
  o.warmup_steps = 40
  # Length of the learning-rate schedule in steps; 0 = the run's train.num_steps at its first
  # launch. The stored config.json holds the length, so extending a run (a larger
  # train.num_steps) keeps the schedule: steps past its end run at its final learning rate.
  # Set it to stretch the schedule over an extension (or to decay earlier than the run ends).
  o.schedule_steps = 0
  o.end_lr_factor = 0.01  # Final learning rate as a fraction of the peak (cosine, poly).
  o.poly_power = 0.9  # Exponent of the poly schedule.
  o.weight_decay = 1e-4  # Applied to kernels only (not biases or norm parameters).
  o.momentum = 0.9  # sgd / rmsprop momentum.
  o.nesterov = False  # sgd / rmsprop Nesterov momentum.
  o.b1 = 0.9  # Adam-family betas and epsilon.
  o.b2 = 0.999
  o.eps = 1e-8
  o.grad_clip_norm = 1.0  # Clip gradients to this global norm (0 = off).
  o.accumulation_steps = 1  # Micro-batches averaged per optimizer update.
  # "train", "freeze" or "scale" (learning rate * backbone_lr_factor) the backbone_modules.
  # A frozen module is not updated and runs as at evaluation also in training: its BatchNorm
  # layers normalise with their stored statistics and keep them, its dropout is off.
  o.backbone = "train"
  o.backbone_lr_factor = 0.1
  # Top-level modules of the model treated as the backbone: parts of a segmentation model
  # ("backbone", "neck", "decoder", "head"); each must exist in the model.
  o.backbone_modules = ("backbone",)

  config.train = t = ml_collections.ConfigDict()
  # "train" (resumes from the workdir) or "eval" (evaluate a checkpoint). A rerun in a workdir
  # must use its stored config.json; only fields in seg_jax.workdir.RESUMABLE_FIELDS (train
  # mode) or EVAL_FIELDS (eval mode) may differ, e.g. a larger num_steps extends a run. Without
  # --config, seg_jax.main starts from that stored config (--workdir=W --config.train.mode=eval).
  t.mode = "train"
  t.num_steps = 800  # Training steps (each one global batch).
  t.global_batch_size = 8  # Summed over all devices and hosts; divisible by the device count.
  t.log_every = 50  # Steps between console / TensorBoard training logs.
  t.eval_every = 200  # Steps between validation runs (also at the last step).
  t.checkpoint_every = 200  # Steps between periodic checkpoints (also at the last step).
  # Latest checkpoints kept, besides the best-mIoU one. Checkpoints are also saved at every
  # evaluation (so the best is restorable) and on preemption.
  t.keep_checkpoints = 2
  # Persistent XLA compilation cache folder ("" = off): a relaunch of a config loads its
  # compiled steps from here instead of compiling them again (seg_jax/compilation.py).
  t.compilation_cache_dir = cache_folder("jax")
  # XLA:CPU's YNNPACK fusions for the train and eval steps (only the CPU reads it). Off: XLA's
  # other convolutions. YNNPACK runs channel counts that are not multiples of 16 at about a third
  # of its speed for 32 or 64 (a 3x3 convolution of 38 or 76 channels at 21-33 GFLOP/s against
  # 81-123 without), so on the idle 2-core CPU the NAIP train step (batch 8 of 256x256x4) runs
  # 2.7x faster off for the U-Net of widths 19-38-76-152 (6.0 -> 2.2 s), 1.2x for asym_unet and
  # DeepLabV3+ and as fast for UNet++ (`python -m benchmarks.ynnpack_bench`, benchmarks/README.md).
  # $XLA_FLAGS naming --xla_cpu_experimental_ynn_fusion_type overrides this field.
  t.xla_cpu_ynnpack = False
  # Independent replicas trained in one jitted step over a leading replica axis of the state,
  # with seeds seed, seed + 1, ...; replica k writes <workdir>/seed<seed + k> exactly as a run of
  # that seed alone (train.num_replicas = 1) would. 1 = one run, written to the workdir itself.
  t.num_replicas = 1
  # How the step computes the replicas: "vmap" (one batched computation; the replicas'
  # convolutions become grouped convolutions, which XLA runs several times slower per image on a
  # CPU: benchmarks/README.md), "unroll" (one copy of the step per replica in the program; S
  # times the compile time) or "auto" (unroll on a CPU, vmap on an accelerator).
  t.replica_mode = "auto"

  config.eval = e = ml_collections.ConfigDict()
  # Split evaluated during training and by mode = "eval": "val" or "test", or "train" (its
  # images as evaluation sees them, not augmented: with val's scores, the generalisation gap).
  e.split = "val"
  e.global_batch_size = 8  # Evaluation batch (the last partial batch is padded and masked).
  # mode = "eval" restores "best" (val mIoU) or "latest" (its outputs named eval_<split>_latest).
  e.checkpoint = "best"
  # Folder of mode = "eval" outputs ("" = the workdir); the workdir is only read, so it may be
  # read-only.
  e.output_dir = ""
  # Val images shown per evaluation (the first ones of eval.split): in TensorBoard and in
  # <workdir>/predictions/step_<N>.png (image | truth | prediction | errors).
  e.num_images = 4
  # Class names left out of the `_excluding` means (miou_excluding, mean_dice_excluding,
  # mean_accuracy_excluding), reported beside the means over every class, e.g. ("unlabeled",)
  # for a class the labels hold but no model is meant to predict. () = none. The unsuffixed
  # scores (and the choice of the best checkpoint) always count every class.
  e.exclude_classes = ()
  # Resolution of mode = "eval" scores: "training" scores the split as training sees it
  # (resized to data.image_size, or cut into patches); "full" predicts each image of the split
  # at its original size as eval.predict says and scores it against its mask at that size
  # (labels are never resized). "full" reads the original files of a folder dataset (or the
  # synthetic scenes), not a prepared TFDS one; its outputs are named eval_<split>_full_<mode>,
  # followed by each eval.predict option that differs from its default (seg_jax.workdir.eval_name).
  e.resolution = "training"
  # How eval.resolution = "full" predicts: the options of seg_jax.inference.predict, with the
  # predict command's defaults.
  e.predict = p = ml_collections.ConfigDict()
  p.mode = "resize"  # "resize" to the training size and back, or "slide" windows at full size.
  p.window = ()  # (H, W) of the resize target or slide window; () = the training image size.
  p.overlap = 0.25  # Share of a window overlapped by its neighbours ("slide").
  p.blend = "uniform"  # Weighting of overlapping windows: "uniform", "smooth" or "crop".
  p.tta = "none"  # "none", "flips" or "flips_rot90": probabilities averaged over transforms.
  p.scales = (1.0,)  # Image scale factors whose probabilities are averaged (< 1 shrinks).
  p.batch_size = 8  # Windows per jitted call.
  return config
