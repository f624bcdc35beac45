"""The Lightning shell (the only package that imports Lightning): the module over EditPipeline, the data
module, callbacks, the sharding strategy, CPU threads and the notices given before the first edit."""
