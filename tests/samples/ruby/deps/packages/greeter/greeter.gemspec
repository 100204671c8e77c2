Gem::Specification.new do |spec|
  spec.name = "greeter"
  spec.version = "1.0.0"
  spec.summary = "Says hello (a local gem of the deps sample)"
  spec.authors = ["Functions Service"]
  spec.license = "MIT"
  spec.files = ["lib/greeter.rb"]
  spec.require_paths = ["lib"]
  spec.required_ruby_version = ">= 3.0"
end
