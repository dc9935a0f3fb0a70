"""The prediction gallery: image, ground truth and prediction side by side for a few evaluation images.

- `render`: picks the images, predicts them and writes the gallery directory atomically;
- `pixels`: the overlay and side-by-side panels, numpy and Pillow only;
- `html`: the `index.html` page over the panels.
"""
