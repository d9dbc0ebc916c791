"""`pqmim serve`: a local web page comparing pqmim with JPEG, WebP and AVIF on the user's own
image. The server (app.py) needs the web extra (`pip install "pqmim[web]"`); the work it runs
(jobs.py) needs only the core package."""
