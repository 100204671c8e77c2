# frozen_string_literal: true

# The local gem of the deps sample.
module Greeter
  module_function

  def greet(name)
    "Hello, #{name}!"
  end
end
