"""`imagegw`: a command line for the image gateway (generate, status, batch).

client.py holds the HTTP calls, batch.py the S3 side of batches, progress.py the live progress line and
main.py the arguments and the output. Nothing here imports the gateway itself (the layer's `imagegw`).
"""
