import logstream_sdk

class Passthrough(logstream_sdk.Processor):
    NAME = "py-passthrough"
    def process(self, record, emit):
        emit(logstream_sdk.Output(record.value, key=record.key))

Processor = logstream_sdk.export(Passthrough)
