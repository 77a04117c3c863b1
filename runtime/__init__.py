"""The lean runtime of `rfc serve` and `rfc run`: loads a bundle (model/), runs it on a device
(devices/), batches requests (engine/), picks tokens (sampling/), turns them into text and
messages (text/) and serves them over HTTP (server/)."""
