"""What training reads: labelled bags of feature files, patch-image folders, and their preprocessing.

- `labels`: labels.csv matched to feature files, checked before training (`load_labelled_bags`); patient bags.
- `cohorts`: slide tables (slide → patient) and patient tables (patient → label), joined per slide.
- `bags`: `BagDataset` over feature files or in-memory bags, a patient's slides as one bag, the per-fold feature
  scaler, the bag loader.
- `patients`: patients read from names (BreakHis files, TCGA barcodes) and the check that none straddles a split.
- `images`: patch-image folders (`ImageSet`, split layouts, patient groups) and `ImagePart`/`image_loader`.
- `provenance`: file and settings fingerprints (weights, labels, extraction settings) and the feature set's fingerprint.
- `transforms`: preprocessing from a model's `DataConfig`, training augmentation, mixup/CutMix.
"""
