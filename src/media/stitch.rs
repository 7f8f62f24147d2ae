// stitch: TODO
