"""imagegw: the shared layer of the serverless image-generation gateway.

Flow: `api` validates and creates a task (`tasks`), `worker` advances it through a `dialects` module via
`transport`, and `storage` keeps every image in the gateway's S3 bucket.
"""
