"""An in-memory stand-in for the subset of google.cloud.storage.Client that rlaif_jax.storage
uses (bucket().blob(), exists, download/upload, list_blobs)."""


class FakeBlob:
  def __init__(self, store, name):
    self.store, self.name = store, name

  def exists(self):
    return self.name in self.store

  def download_as_bytes(self):
    return self.store[self.name]

  def upload_from_string(self, data):
    self.store[self.name] = data if isinstance(data, bytes) else data.encode()

  def upload_from_filename(self, filename):
    with open(filename, "rb") as f:
      self.store[self.name] = f.read()


class FakeGcsClient:
  """Objects live in `buckets[bucket][name]` as bytes."""

  def __init__(self):
    self.buckets = {}

  def bucket(self, name):
    store = self.buckets.setdefault(name, {})

    class _Bucket:
      def blob(self, blob_name):
        return FakeBlob(store, blob_name)
    return _Bucket()

  def list_blobs(self, bucket, prefix=""):
    return [FakeBlob(self.buckets.get(bucket, {}), n) for n in sorted(self.buckets.get(bucket, {}))
            if n.startswith(prefix)]
