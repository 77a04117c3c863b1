"""What the runtime's layers share, below all of them: one step's inputs (StepBatch), the device interface (Device,
DeviceError, the op-by-op InterpretedDevice), the cpu library's host sampling kernels a device hands to the sampler, the
request error, bounded work pools. Imports no other runtime folder."""
