"""Class-name constants of the real datasets, importable without detectron2.

Conventions: a ``*_SEM_SEG_CLASSES`` / ``VOC_CLASSES`` tuple is indexed by the value written in the
mask (index 0 is "background"); the other tuples list object classes only.
"""
from typing import Dict, List, Tuple

__all__ = [
    "VOC_CLASSES",
    "ADE20K_150_CLASSES",
    "ADE20K_151_CLASSES",
    "COCO_THING_CLASSES",
    "COCO_THING_IDS",
    "COCO_THINGS_SEM_SEG_CLASSES",
    "COCO_STUFF_ONLY_CLASSES",
    "COCO_STUFF_171_CLASSES",
    "COCO_STUFF_171_IDS",
    "VOC_TO_COCO",
    "voc_palette",
]

# Pascal VOC 2012: mask value == index; 255 marks object borders / "difficult" pixels.
VOC_CLASSES: Tuple[str, ...] = (
    "background",
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# ADE20K SceneParsing (ADEChallengeData2016), label value i+1 for entry i; value 0 is "other".
# First synonym of each row of the official objectInfo150 table (the short names MiB uses).
# detectron2's ``ade20k_sem_seg_*`` metadata lists the same classes in the same order but with
# several synonyms per entry (e.g. "road, route").
ADE20K_150_CLASSES: Tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree",
    "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf",
    "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)
ADE20K_151_CLASSES: Tuple[str, ...] = ("background",) + ADE20K_150_CLASSES

# COCO 2017 "thing" categories in detectron2's contiguous order (sorted by COCO category id),
# with the names detectron2's COCO metadata uses.
COCO_THING_CLASSES: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane",
    "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# COCO category id of each entry of COCO_THING_CLASSES: 1..90 minus the ten ids never annotated.
COCO_THING_IDS: Tuple[int, ...] = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)
# Mask values of the ``coco_2017_things_sem_seg_*`` datasets (see datasets/prepare_coco_things_semantic.py).
COCO_THINGS_SEM_SEG_CLASSES: Tuple[str, ...] = ("background",) + COCO_THING_CLASSES

# COCO-Stuff's 91 stuff categories (ids 92..182), in id order, with COCO-Stuff's own names.
COCO_STUFF_ONLY_CLASSES: Tuple[str, ...] = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCO_STUFF_ONLY_IDS: Tuple[int, ...] = tuple(range(92, 183))
# Mask values 0..170 of the ``coco_2017_*_stuff_sem_seg`` datasets (COCO-Stuff 164k, 171 classes: the 80 things
# then the 91 stuff, each in COCO id order; see datasets/prepare_coco_stuff_semantic.py).
COCO_STUFF_171_CLASSES: Tuple[str, ...] = COCO_THING_CLASSES + COCO_STUFF_ONLY_CLASSES
COCO_STUFF_171_IDS: Tuple[int, ...] = COCO_THING_IDS + COCO_STUFF_ONLY_IDS

# Each of the 20 VOC object classes and its COCO thing class (COCO-to-VOC protocol of WILSON/FMWISS).
VOC_TO_COCO: Dict[str, str] = {
    name: {
        "aeroplane": "airplane",
        "diningtable": "dining table",
        "motorbike": "motorcycle",
        "pottedplant": "potted plant",
        "sofa": "couch",
        "tvmonitor": "tv",
    }.get(name, name)
    for name in VOC_CLASSES[1:]
}


def voc_palette(num_classes: int = 256) -> List[Tuple[int, int, int]]:
    """The Pascal VOC colour map: the bits of the class index spread over R, G and B.

    Bit ``3*k + c`` of the index (c = 0 for red, 1 green, 2 blue) becomes bit ``7 - k`` of
    channel c; e.g. 1 -> (128, 0, 0), 2 -> (0, 128, 0), 15 -> (192, 128, 128).
    """
    palette = []
    for index in range(num_classes):
        rgb = [0, 0, 0]
        for k in range(8):
            for c in range(3):
                if (index >> (3 * k + c)) & 1:
                    rgb[c] |= 1 << (7 - k)
        palette.append(tuple(rgb))
    return palette
