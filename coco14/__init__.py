"""MS COCO 2014 (80 classes): the dataset spec and its two folder layouts, image-level labels and lists, class-index
masks from the instances JSON, and the built-in toy COCO."""
