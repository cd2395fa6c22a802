"""Support package of ``examples/fer2013.py``: the reproduction of Nishime et al.'s occlusion
analysis of a FER-2013 CNN on top of the ``occlusion_probe`` library.

Modules
-------
classes      the seven class names, FER-2013's class imbalance, folder-name mapping
data         loaders for Kaggle's ``fer2013.csv`` and ``train/<class>/*.png`` folders
synthetic    procedural 48x48 faces with known ground truth (the default data set)
preprocess   Global Contrast Normalization and ZCA whitening as torch modules
model        the paper's CNN and ``build_model(preprocess)`` = ``nn.Sequential(preprocess, cnn)``
train        seeded Adam training and prediction
perturbation the keep / remove curves under fill 0.0 and linear imputation, their report
             section, leakage check and figure
markdown     percentages and tables of the report
report       report.json / report.md, curves.csv / curves.json and the figures
pipeline     ``run(RunConfig)``: data -> model -> sweep -> keep-only -> report
"""
