"""hirestile: exact tiled inference of convolutional segmentation networks."""
