"""The lean runtime of `rfc serve` and `rfc run`: loads a bundle (model/), runs it on a device
(devices/, behind the device interface of core/), batches requests (engine/), picks tokens
(sampling/), turns them into text and messages (text/) and serves them over HTTP (server/).
The folders are layers: README.md, "Runtime layers"."""
