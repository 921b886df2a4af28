"""Where models and images come from: `data` (training sets and query images, any format),
`models` (a diffusers UNet + scheduler from a folder, a pipeline or the Hub cache), `train` (the
training recipe of the embedded default and of the evaluation's retrains) and `generate`
(sampling). Depends only on the shared modules at the top of `mucs`."""
