"""Configuration keys added by fmwiss_d2. Every key has a default and a one-line comment."""
from detectron2.config import CfgNode as CN


def add_fmwiss_config(cfg):
    """Adds the fmwiss_d2 keys to a detectron2 config (call once, before merge_from_file)."""
    # The built-in synthetic world ("shapes"): generated on first use and cached.
    cfg.SHAPES = CN()
    cfg.SHAPES.CACHE_DIR = ""  # where generated worlds live; "" = $FMWISS_CACHE or ~/.cache/fmwiss_d2
    cfg.SHAPES.SEED = 0  # generator seed; a different seed gives a different world (and folder)
    cfg.SHAPES.NUM_TRAIN = 2000  # training images
    cfg.SHAPES.NUM_VAL = 500  # validation images
    cfg.SHAPES.NUM_TEST = 500  # held-out test images (own folder and random stream; see data/datasets/shapes.py)
    cfg.SHAPES.IMAGE_SIZE = 128  # images are square, IMAGE_SIZE x IMAGE_SIZE pixels

    # The method (training regime), with or without an incremental task (fmwiss_d2/methods).
    cfg.METHOD = CN()
    cfg.METHOD.NAME = "Supervised"  # METHOD_REGISTRY name: "Supervised", "Finetune", "MiB", ...
    cfg.METHOD.MIB = CN()
    cfg.METHOD.MIB.KD_WEIGHT = 10.0  # weight of the unbiased distillation (MiB's lambda, 10 in the paper)
    cfg.METHOD.MIB.UNBIASED_CE = True  # the model's background logits absorb old classes in the class loss
    cfg.METHOD.MIB.INIT_FROM_BACKGROUND = True  # new classifiers start from the background's
    cfg.METHOD.MIB.MASK_KD_WEIGHT = 0.0  # mask classification: distill old-class queries' masks (0 = off)
    cfg.METHOD.MIB.PSEUDO_LABEL = False  # old-model pseudo labels on background pixels (CoMFormer; OldModelSource)

    _add_pading_config(cfg)

    # Pseudo-label sources (fmwiss_d2/pseudo_labels): their settings.
    cfg.PSEUDO_LABELS = CN()
    cfg.PSEUDO_LABELS.OLD_MODEL = CN()
    cfg.PSEUDO_LABELS.OLD_MODEL.THRESHOLD = 0.0  # minimum normalised old-model score of a pseudo label
    cfg.PSEUDO_LABELS.CLIP = CN()
    cfg.PSEUDO_LABELS.CLIP.TEMPERATURE = 0.01  # softmax temperature over the image's class + background prompts
    cfg.PSEUDO_LABELS.CLIP.THRESHOLD = 0.0  # minimum top score of a valid pixel

    # Protocols (fmwiss_d2/engine/protocol.py): named variants compared by tools/run_incremental.py and
    # tools/run_variants.py, e.g. "MiB-kd1: METHOD.NAME MiB METHOD.MIB.KD_WEIGHT 1.0" (ablations, baselines).
    cfg.PROTOCOL = CN()
    cfg.PROTOCOL.VARIANTS = []  # "NAME: KEY VALUE ..." config overrides of a variant (METHOD.NAME unset: the config's)
    cfg.PROTOCOL.METRICS = ["sem_seg/mIoU"]  # "task/metric" columns of tools/run_variants.py's table

    # Incremental learning: which task and step this run trains (tasks live in fmwiss_d2/data/datasets/tasks.py).
    cfg.INCREMENTAL = CN()
    cfg.INCREMENTAL.TASK = ""  # e.g. "shapes_6-4"; "" = ordinary (non-incremental) training
    cfg.INCREMENTAL.SETTING = "overlap"  # "overlap" or "disjoint" (MiB's two protocols)
    cfg.INCREMENTAL.STEP = 0  # step to train; step 0 learns the base classes
    cfg.INCREMENTAL.TRANSFORM = ""  # TASK_TRANSFORM_REGISTRY name applied to the task ("Joint": all classes at once)
    cfg.INCREMENTAL.NEW_CLASS_LABELS = "pixel"  # supervision of steps >= 1: "pixel" masks or "image" labels only
    cfg.INCREMENTAL.PREVIOUS_WEIGHTS = ""  # final model of the previous step; "" = OUTPUT_DIR/step{k-1}/model_final.pth
    cfg.INCREMENTAL.STEP_BASE_LR = -1.0  # SOLVER.BASE_LR of steps >= 1 (MiB: 10x lower); <= 0 keeps SOLVER.BASE_LR
    cfg.INCREMENTAL.STEP_MAX_ITER = -1  # SOLVER.MAX_ITER of steps >= 1; <= 0 keeps SOLVER.MAX_ITER
    cfg.INCREMENTAL.EPOCHS = 0  # > 0: every step trains this many epochs of its own data (overrides MAX_ITER)
    cfg.INCREMENTAL.STEP_EPOCHS = 0  # > 0: steps >= 1 train this many epochs instead of EPOCHS (WILSON on VOC: 40)
    for old, new in (("INCREMENTAL.METHOD", "METHOD.NAME"), ("INCREMENTAL.MIB", "METHOD.MIB"),
                     ("INCREMENTAL.MIB.PSEUDO_LABEL_THRESHOLD", "PSEUDO_LABELS.OLD_MODEL.THRESHOLD")):
        cfg.register_renamed_key(old, new)
    for key in ("KD_WEIGHT", "UNBIASED_CE", "INIT_FROM_BACKGROUND", "MASK_KD_WEIGHT", "PSEUDO_LABEL"):
        cfg.register_renamed_key(f"INCREMENTAL.MIB.{key}", f"METHOD.MIB.{key}")

    _add_model_config(cfg)
    _add_foundation_config(cfg)
    _add_fmwiss_pseudo_label_config(cfg)
    _add_dupl_config(cfg)
    _add_fmwiss_config(cfg)


def _add_pading_config(cfg):
    """PADing (methods/pading.py): zero-shot segmentation by primitive generation, in three stages."""
    c = cfg.METHOD.PADING = CN()
    c.SPLIT = ""  # zero-shot split (data/datasets/zero_shot.py): a registered name or a YAML file
    c.STAGE = "seen"  # "seen" (stage 1: model on seen classes), "generator" (train the generator), "classifier" (stage 2)
    # the text each class's embedding is made of: "name" (its prompt word, as on COCO) or "description" (the
    # training dataset's metadata `class_descriptions`: its name with attribute words; the synthetic world has them)
    c.CLASS_TEXT = "name"  # "name" or "description"
    c.GENERATOR = "PrimitiveGenerator"  # GENERATOR_REGISTRY name: "PrimitiveGenerator" (PADing) or "MLPGenerator" (GMMN)
    c.NUM_PRIMITIVES = 400  # learnable primitives the generator's queries attend to
    c.GENERATOR_LAYERS = 3  # transformer-decoder layers of the primitive generator
    c.GENERATOR_HIDDEN_DIM = 256  # FFN / MLP width of the generators and the disentangler
    c.NOISE_DIM = 64  # width of the generator's Gaussian noise
    # the primitive generator's noise: False = projected noise added to its query once; True = N(0, I) added after
    # every cross-attention (PADing's public code)
    c.LAYER_NOISE = False
    c.GENERATOR_DROPOUT = 0.0  # dropout in the primitive generator's layers (0.1 in PADing's public code)
    c.MMD_SIGMAS = [2.0, 5.0, 10.0, 20.0, 40.0, 80.0]  # Gaussian kernel widths of the MMD loss (GMMN's)
    c.CLS_WEIGHT = 0.001  # weight of the synthetic embeddings' classification loss
    c.DISENTANGLE = True  # feature disentanglement (semantic-related / unrelated parts, reconstruction)
    c.ALIGN = True  # semantic-visual relation alignment of the related parts (needs DISENTANGLE)
    c.STRUCTURE_WEIGHT = 1e-4  # weight of the whole structure term (disentanglement + alignment)
    c.ALIGN_WEIGHT = 1.0  # alignment + unrelated-prior terms inside the structure term
    c.RELATION_WEIGHT = 1.0  # semantic classification of the related part inside the structure term
    c.RECONSTRUCTION_WEIGHT = 0.5  # reconstruction inside the structure term
    c.RELATION_TEMPERATURE = 0.1  # temperature of the cosine relations (alignment, related-part classification)
    c.GENERATOR_WEIGHTS = ""  # stage 2: the generator stage's final checkpoint (its generator is used frozen)
    c.NUM_FAKE = 16  # stage 2: synthetic unseen embeddings per iteration
    c.STAGE_MAX_ITER = 0  # SOLVER.MAX_ITER of the generator and classifier stages (tools/run_zero_shot.py); 0 = keep
    c.STAGE_BASE_LR = 0.0  # SOLVER.BASE_LR of the generator and classifier stages; 0 = keep
    c.GENERATOR_BASE_LR = 0.0  # SOLVER.BASE_LR of the generator stage alone; 0 = STAGE_BASE_LR
    c.UNSEEN_WEIGHT = 1.0  # stage 2: class weight of the unseen classes in the classifier's cross-entropy
    c.UNSEEN_LOGIT_BIAS = 0.0  # inference: added to the unseen classes' logits (calibrated stacking; 0 = off)


def _add_model_config(cfg):
    """Model keys (Mask2Former-style and per-pixel DeepLabV3 models)."""
    # --- model ---
    # Keys shared by both model families (mask classification and per-pixel).
    cfg.MODEL.CLASSES_PER_STEP = []  # classifier groups, one per incremental step; [] = [SEM_SEG_HEAD.NUM_CLASSES]
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256  # channels of the per-pixel mask embeddings (mask features)
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"  # PIXEL_DECODER_REGISTRY name
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6  # deformable-attention encoder layers in the pixel decoder
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]  # encoded levels
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4  # sampling points per head and level
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8  # attention heads in the encoder
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024  # encoder FFN width
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DROPOUT = 0.0  # encoder dropout

    # Multi-scale deformable attention (fmwiss_d2/modeling/ops).
    cfg.MODEL.MS_DEFORM_ATTN = CN()
    cfg.MODEL.MS_DEFORM_ATTN.DETERMINISTIC = False  # bitwise-reproducible CUDA backward; False = follow torch's switch

    # Mask2Former-style mask classification (meta-architecture "MaskFormer").
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"  # decoder registry name
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256  # query and attention width
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100  # learned queries = predicted masks per image
    cfg.MODEL.MASK_FORMER.NHEADS = 8  # attention heads in the decoder
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0  # decoder dropout
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048  # decoder FFN width
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10  # decoder layers + 1 (the initial prediction counts as one, as in Mask2Former)
    cfg.MODEL.MASK_FORMER.PRE_NORM = False  # pre-norm instead of post-norm in decoder layers
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False  # 1x1 projection of decoder inputs even when widths match
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32  # pad images to a multiple of this (0 = backbone's own)
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True  # losses on every decoder layer's prediction
    cfg.MODEL.MASK_FORMER.MATCHER_NAME = "HungarianMatcher"  # MATCHER_REGISTRY name
    cfg.MODEL.MASK_FORMER.CRITERION_NAME = "SetCriterion"  # CRITERION_REGISTRY name
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1  # class-CE weight of the "no object" target
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0  # weight of the class loss (and class matching cost)
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0  # weight of the mask BCE loss (and cost)
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0  # weight of the dice loss (and cost)
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112  # sampled points per mask (0 = every pixel, no sampling)
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0  # importance sampling: candidates = ratio * points
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75  # share of points taken at the most uncertain candidates
    cfg.MODEL.MASK_FORMER.TEXT_CLASSIFIER = CN()  # open-vocabulary class head (heads/classifier.py: TextClassifier)
    cfg.MODEL.MASK_FORMER.TEXT_CLASSIFIER.ENABLED = False  # cosine with class-name text embeddings instead of a linear layer
    cfg.MODEL.MASK_FORMER.TEXT_CLASSIFIER.EMBED_DIM = 64  # text embedding width (CLIP's embed_dim: 64 tiny, 512 ViT-B)
    cfg.MODEL.MASK_FORMER.TEXT_CLASSIFIER.TEMPERATURE = 0.07  # initial softmax temperature (learned)
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True  # produce "sem_seg" at inference
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False  # produce "instances" at inference
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False  # produce "panoptic_seg" at inference
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.8  # panoptic: keep queries with score above this
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.8  # panoptic: keep segments keeping this share of their mask
    cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_IMAGE = 100  # instance: top-k (query, class) pairs kept
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False  # resize masks before combining

    # Tiny CPU backbone ("build_tiny_backbone"): a small ResNet-like net with strides 4/8/16/32.
    cfg.MODEL.TINY = CN()
    cfg.MODEL.TINY.WIDTHS = [32, 64, 96, 128]  # channels of res2..res5
    cfg.MODEL.TINY.DEPTHS = [1, 1, 2, 1]  # residual blocks per stage
    cfg.MODEL.TINY.STEM_WIDTH = 24  # channels of the stride-4 stem
    cfg.MODEL.TINY.NORM = "BN"  # normalization ("BN", "GN", "SyncBN", "FrozenBN", "")
    cfg.MODEL.TINY.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # returned stages
    cfg.MODEL.TINY.DILATIONS = [1, 1, 1, 1]  # per stage; > 1 keeps the stride, dilates instead ([1, 1, 2, 4]: stride 8)

    # DeepLabV3 per-pixel model (meta-architecture "DeepLabV3"); ResNet keys as in detectron2's DeepLab project.
    cfg.MODEL.DEEPLAB = CN()
    cfg.MODEL.DEEPLAB.IN_FEATURE = "res5"  # backbone feature fed to ASPP
    cfg.MODEL.DEEPLAB.ASPP_CHANNELS = 256  # ASPP width
    cfg.MODEL.DEEPLAB.ASPP_DILATIONS = [6, 12, 18]  # atrous rates at output stride 16
    cfg.MODEL.DEEPLAB.ASPP_DROPOUT = 0.1  # dropout after the ASPP projection
    cfg.MODEL.DEEPLAB.NORM = "BN"  # normalization in the head
    cfg.MODEL.DEEPLAB.LOSS_WEIGHT = 1.0  # weight of the per-pixel cross-entropy
    if "RES4_DILATION" not in cfg.MODEL.RESNETS:
        cfg.MODEL.RESNETS.RES4_DILATION = 1  # dilation of res4 (detectron2 DeepLab backbone)
        cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]  # res5 multi-grid rates (DeepLabV3)
        cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"  # "basic" or "deeplab" (three 3x3 convs)

    # Data, solver and evaluation keys used by the trainer.
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"  # DATASET_MAPPER_REGISTRY name
    cfg.INPUT.SUPERVISION = "pixel"  # training labels: "pixel" (masks) or "image" (image-level labels; no mask is read)
    cfg.INPUT.SIZE_DIVISIBILITY = -1  # mappers pad to this (-1 = no padding in the mapper)
    cfg.INPUT.COLOR_AUG_SSD = False  # photometric distortion (SSD style) in training
    if "SINGLE_CATEGORY_MAX_AREA" not in cfg.INPUT.CROP:
        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # retry crops dominated by one class above this share
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "SGD" or "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # backbone lr = BASE_LR * this
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings (queries, level embeddings)
    if "POLY_LR_POWER" not in cfg.SOLVER:
        cfg.SOLVER.POLY_LR_POWER = 0.9  # exponent of the "WarmupPolyLR" schedule
        cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0  # floor of the poly schedule (fraction of BASE_LR)
    cfg.TEST.EVALUATOR_TYPES = []  # EVALUATOR_REGISTRY names; [] = the dataset's metadata evaluator_type


def _add_foundation_config(cfg):
    """Foundation models (CLIP, DINO): where their checkpoints come from."""
    # --- foundation models ---
    # CLIP (open_clip): class-aware image-text model; dense maps via MaskCLIP's value path.
    cfg.MODEL.CLIP = CN()
    cfg.MODEL.CLIP.MODEL_NAME = "ShapesCLIP-Tiny"  # open_clip model name (e.g. "ViT-B-16") or a model-config JSON path
    cfg.MODEL.CLIP.CHECKPOINT = "auto:shapes"  # local file, open_clip pretrained tag, "auto:shapes" (pretrain if absent), "" (random)
    cfg.MODEL.CLIP.FORCE_QUICK_GELU = False  # QuickGELU activations (OpenAI's weights) for a name without "-quickgelu"
    cfg.MODEL.CLIP.PROMPT_TEMPLATES = []  # prompt templates with one "{}"; [] = foundation.clip.DEFAULT_TEMPLATES
    cfg.MODEL.CLIP.BACKGROUND_NAMES = ["sky", "wall", "grass", "sand"]  # background prompts competing in dense maps
    cfg.MODEL.CLIP.PRETRAIN = CN()  # "auto:shapes" pretraining on the world of cfg.SHAPES (all enter the cache key)
    cfg.MODEL.CLIP.PRETRAIN.STEPS = 1000  # optimizer steps of contrastive image-caption training
    cfg.MODEL.CLIP.PRETRAIN.BATCH_SIZE = 64  # image-caption pairs per step
    cfg.MODEL.CLIP.PRETRAIN.LR = 1e-3  # AdamW peak learning rate (warm-up, cosine decay)
    cfg.MODEL.CLIP.PRETRAIN.SEED = 0  # initialization, batch order and augmentation seed
    # "attributes": captions also give the classes' colour, texture and outline words, so that the text space has the
    # visual structure zero-shot transfer needs (PADing's shapes config; docs/pading.md)
    cfg.MODEL.CLIP.PRETRAIN.CAPTIONS = "names"  # "names" (the default tiny CLIP) or "attributes"

    # DINO (timm ViT): class-agnostic self-supervised ViT; last-layer CLS attention and keys.
    cfg.MODEL.DINO = CN()
    cfg.MODEL.DINO.ARCH = "dino_shapes_tiny"  # "vit_tiny"/"vit_small"/"vit_base" (DINO's), a model_configs stem or a JSON path
    cfg.MODEL.DINO.PATCH_SIZE = 0  # patch size override (8 or 16 for DINO's releases); 0 = the architecture's own
    cfg.MODEL.DINO.CHECKPOINT = "auto:shapes"  # DINO-format file, "auto:shapes" (pretrain if absent) or "" (random)
    cfg.MODEL.DINO.CHECKPOINT_KEY = "teacher"  # network of a full training checkpoint to load ("teacher" or "student")
    cfg.MODEL.DINO.PRETRAIN = CN()  # "auto:shapes" pretraining on the world of cfg.SHAPES (all enter the cache key)
    cfg.MODEL.DINO.PRETRAIN.STEPS = 500  # optimizer steps of self-distillation
    cfg.MODEL.DINO.PRETRAIN.CORPUS = "object_centric"  # images learnt from: the world's generator, ImageNet-like layout; or "world"
    cfg.MODEL.DINO.PRETRAIN.BATCH_SIZE = 64  # images per step (each gives 2 global crops + the local crops, if any)
    cfg.MODEL.DINO.PRETRAIN.LR = 1e-3  # AdamW peak learning rate (warm-up, cosine decay)
    cfg.MODEL.DINO.PRETRAIN.SEED = 0  # initialization, batch order and augmentation seed


def _add_fmwiss_pseudo_label_config(cfg):
    """FMWISS's pseudo-label sources: the foundation-model co-segmentation and the WILSON-style localizer."""
    # Co-segmentation ("CoSegmentation", fmwiss_d2/pseudo_labels/coseg.py; docs/fmwiss.md): CLIP's class maps
    # (PSEUDO_LABELS.CLIP.*) refined by DINO's objectness and by class-specific seeds spread over DINO features.
    cfg.PSEUDO_LABELS.COSEG = CN()
    cfg.PSEUDO_LABELS.COSEG.USE_DINO = True  # gate the class maps by DINO's CLS-attention objectness
    cfg.PSEUDO_LABELS.COSEG.USE_SEEDS = True  # add each class's seeds spread by DINO affinity (needs USE_DINO)
    cfg.PSEUDO_LABELS.COSEG.NUM_SEEDS = 4  # seeds per labelled class: its top patches in the CLIP map
    cfg.PSEUDO_LABELS.COSEG.AFFINITY_POWER = 4.0  # affinity = max(cos, 0) ** power between DINO patch features
    cfg.PSEUDO_LABELS.COSEG.PROPAGATION_STEPS = 1  # random-walk steps from the seeds (row-normalised affinity)
    cfg.PSEUDO_LABELS.COSEG.FEATURES = "keys"  # DINO patch descriptors: "keys" (last block's) or "features"
    cfg.PSEUDO_LABELS.COSEG.SEED_WEIGHT = 0.5  # class map = (1 - w) * CLIP + w * seed guidance
    cfg.PSEUDO_LABELS.COSEG.ATTENTION_WEIGHT = 1.0  # gate = (1 - w) + w * objectness (0 = no gating)
    cfg.PSEUDO_LABELS.COSEG.NORMALIZE = True  # scale each class map to max 1 (an image label says the class is there)
    # blend each class map with its mean over the DINO object (objectness >= OBJECT_THRESHOLD) a pixel lies in
    cfg.PSEUDO_LABELS.COSEG.OBJECT_FILL = 0.0  # blend weight (0 = off, 1 = object means only)
    cfg.PSEUDO_LABELS.COSEG.OBJECT_THRESHOLD = 0.3  # objectness (in [0, 1], max 1 per image) of an object pixel
    cfg.PSEUDO_LABELS.COSEG.THRESHOLD = 0.0  # minimum top score of a valid pixel

    # Localizer ("Localizer", fmwiss_d2/pseudo_labels/localizer.py): a CAM head on the previous step's model,
    # trained from the image-level labels before the pseudo labels are computed (WILSON-style baseline).
    cfg.PSEUDO_LABELS.LOCALIZER = CN()
    cfg.PSEUDO_LABELS.LOCALIZER.ITERATIONS = 300  # optimizer steps of the multi-label BCE on pooled scores
    cfg.PSEUDO_LABELS.LOCALIZER.BATCH_SIZE = 16  # images per step
    cfg.PSEUDO_LABELS.LOCALIZER.LR = 0.01  # Adam learning rate of the head
    cfg.PSEUDO_LABELS.LOCALIZER.FEATURE = "res4"  # old model's backbone feature fed to the head (stride 16)
    cfg.PSEUDO_LABELS.LOCALIZER.SEED = 0  # initialization and batch order
    cfg.PSEUDO_LABELS.LOCALIZER.THRESHOLD = 0.0  # minimum top score of a valid pixel


def _add_fmwiss_config(cfg):
    """FMWISS (fmwiss_d2/methods/fmwiss.py): weak steps trained from pseudo masks, a plug-in teacher, copy-paste."""
    c = cfg.METHOD.FMWISS = CN()
    c.SOURCE = "CLIPSource"  # PSEUDO_LABEL_SOURCE_REGISTRY name giving the new classes' pseudo masks
    c.TEACHER = True  # plug-in ASPP teacher refining the pseudo masks online (off: the student learns the pseudo masks)
    c.TEACHER_LR_MULTIPLIER = 1.0  # teacher lr = SOLVER.BASE_LR * this (it starts as the previous step's head)
    c.TEACHER_WARMUP = 0.1  # share of the step's iterations over which the new classes' soft labels move from the pseudo masks to the teacher
    c.EMBED_DIM = 128  # width of the teacher's pixel embeddings (contrastive space)
    c.CONTRASTIVE_WEIGHT = 0.1  # weight of the teacher's dense contrastive loss (0 = off)
    c.CONTRASTIVE_TEMPERATURE = 0.1  # InfoNCE temperature
    c.CONTRASTIVE_PIXELS = 1024  # pixels drawn per batch for the contrastive loss (its cost is quadratic)
    c.OLD_WEIGHT = 0.5  # old classes' soft labels: OLD_WEIGHT * old model + (1 - OLD_WEIGHT) * teacher
    c.NEW_CLASS_PRIOR = 0.01  # new classes' probability at a step's start (model.start_new_classes; teacher: bias = its logit)
    c.NEW_ROWS_LR_MULTIPLIER = 1.0  # the student's new-class rows learn at SOLVER.BASE_LR * this (they start at the prior)
    c.POS_WEIGHT_MAX = 0.0  # > 0: each class's BCE positives weighted by its batch's negative / positive mass, capped; 0 = off
    c.POS_WEIGHT_STUDENT = True  # the POS_WEIGHT_MAX weights also in the student's BCE (False: the teacher's only)
    c.COPY_PASTE = True  # memory-based copy-paste of old-class instances into the step's images
    c.BANK_SIZE = 16  # instances kept per class (B)
    c.BANK_CROP = 64  # stored instances are resized to BANK_CROP x BANK_CROP
    c.PASTE_PER_IMAGE = 1  # old-class instances pasted into each training image
    c.PASTE_SCALE = [0.25, 0.5]  # pasted side / the image's shorter side, drawn uniformly in this range
    c.HARD_PSEUDO_MASKS = False  # True: the teacher's targets are the one-hot argmax of the pseudo masks
    c.OLD_MODEL_VETO = False  # True: pseudo masks' new classes scaled by the old model's background probability
    c.PASTE_AVOID_NEW = False  # True: place each paste (best of 8 random places) off the new classes' pseudo masks


def _add_dupl_config(cfg):
    """DuPL (one-stage WSSS with two students; fmwiss_d2/methods/dupl.py), defaults of the paper's VOC recipe,
    and its pseudo-label source (a trained DuPL labels any split)."""
    # --- DuPL ---
    c = cfg.METHOD.DUPL = CN()
    c.DUAL = True  # two students supervising each other; False = one student on its own CAMs (ablation)
    c.TAU_L = 0.25  # CAM score <= TAU_L: background pseudo label
    c.TAU_H_START = 0.7  # CAM score >= tau_h: foreground; tau_h starts here at SEG_START_ITER
    c.TAU_H_END = [0.55]  # floor of tau_h per foreground class (one value = all classes), reached at THRESHOLD_END_ITER
    c.DYNAMIC_THRESHOLD = True  # cosine descent of tau_h; False = fixed TAU_H_START (ablation)
    c.SEG_START_ITER = 2000  # segmentation heads supervised from here (CAM warm-up before)
    c.THRESHOLD_START_ITER = -1  # start of the tau_h descent; < 0 = SEG_START_ITER
    c.THRESHOLD_END_ITER = -1  # end of the tau_h descent; <= 0 = SOLVER.MAX_ITER
    c.NOISE_FILTER = True  # GMM filter of noisy foreground pseudo labels from GMM_START_ITER (False: ablation)
    c.GMM_START_ITER = 8000  # noise filter and consistency regularisation start here
    c.GMM_GAMMA = 0.95  # a pixel is noisy when its noise posterior exceeds this
    c.GMM_ETA = 1.0  # an image whose two loss clusters' means differ by <= this is clean
    c.GMM_MIN_PIXELS = 1000  # an image with fewer foreground pixels to fit is clean
    c.GMM_MIN_LOSS = 0.1  # per-pixel losses <= this are left out of the fit (already-fitted pixels)
    c.GMM_ITERS = 20  # EM iterations per fit
    c.GMM_PER_CLASS = False  # one mixture per (image, labelled class) instead of per image (the paper's)
    c.POOLING = "max"  # image scores from the features: "max" (global max pooling, the public code's) or "avg"
    c.CLS_WEIGHT = 1.0  # multi-label classification loss (the CAMs' signal)
    c.SEG_WEIGHT = 0.2  # cross pseudo-label segmentation loss
    c.DISCREPANCY_WEIGHT = 0.1  # feature discrepancy of the two students (0: ablation)
    c.CONSISTENCY_WEIGHT = 0.05  # consistency on uncertain/filtered pixels under a strong view (0: ablation)
    c.CONSISTENCY_CONFIDENCE = 0.9  # plain-view prediction used as target where its top probability >= this
    c.CAM_SCALES = [1.0, 0.5, 1.5]  # image scales of the pseudo-label CAMs (summed), the public code's
    c.CAM_FLIP = True  # each scale also flipped (max of the two); CAM_SCALES [1.0] + False: the trained pass's CAM
    c.REFINE_ITERS = 10  # pixel-adaptive refinement of the CAMs along image colours before thresholds (0: off)
    c.REFINE_DILATIONS = [1, 2, 4, 8, 12, 24]  # the refinement's neighbour rings, at half the image size
    c.REFINE_NORMALIZE = False  # max-min normalise the refined CAMs again before the thresholds
    cfg.PSEUDO_LABELS.DUPL = CN()
    cfg.PSEUDO_LABELS.DUPL.CONFIG_FILE = ""  # config the DuPL checkpoint was trained with
    cfg.PSEUDO_LABELS.DUPL.CHECKPOINT = ""  # the trained DuPL checkpoint (model_final.pth)
    cfg.PSEUDO_LABELS.DUPL.THRESHOLD = 0.0  # minimum top score of a valid pixel
