"""PASCAL VOC 2012: the dataset spec, file layout, label derivation and the built-in toy dataset."""
