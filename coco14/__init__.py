"""MS COCO 2014 (80 classes): dataset spec, layouts and label derivation. Not implemented yet."""
