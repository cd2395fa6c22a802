"""The seven FER-2013 expression classes, their names and the class imbalance of the data set.

The label order is Kaggle's ``fer2013.csv`` order (0 Angry ... 6 Neutral). Reports use the
paper's names (Anger, Happiness, ...); the loaders also accept Kaggle's folder names
(``angry``, ``happy``, ...).
"""

from __future__ import annotations

__all__ = [
    "CLASS_NAMES",
    "FER2013_TRAIN_COUNTS",
    "FOLDER_NAME_TO_LABEL",
    "NUM_CLASSES",
    "SHORT_NAMES",
]

CLASS_NAMES: tuple[str, ...] = (
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Neutral",
)
"""Paper names of the classes, indexed by the FER-2013 label 0..6."""

SHORT_NAMES: tuple[str, ...] = ("An", "Di", "Fe", "Ha", "Sa", "Su", "Ne")
"""The paper's two-letter abbreviations, indexed by label."""

NUM_CLASSES = len(CLASS_NAMES)

FER2013_TRAIN_COUNTS: tuple[int, ...] = (3995, 436, 4097, 7215, 4830, 3171, 4965)
"""Images per class in Kaggle's FER-2013 ``Training`` split (28,709 in all), the data the
paper's Table 1 describes: Happiness is the largest class and Disgust about 1.5 % of the data.
The synthetic default draws its class frequencies from these counts."""

# Kaggle's folder data sets name the class folders after the csv's label words; the paper's
# nouns are accepted as well so that either spelling of a data directory loads.
FOLDER_NAME_TO_LABEL: dict[str, int] = {
    "angry": 0,
    "anger": 0,
    "disgust": 1,
    "disgusted": 1,
    "fear": 2,
    "fearful": 2,
    "happy": 3,
    "happiness": 3,
    "sad": 4,
    "sadness": 4,
    "surprise": 5,
    "surprised": 5,
    "neutral": 6,
}
