# frozen_string_literal: true

# The Ruby worker of the Functions Service (Ruby 3.0+, stdlib only).
#
# Started by the supervisor (runtimes/python/server.py --language ruby -- ruby
# .../ruby/worker.rb R W): reads newline-delimited JSON requests from fd R and
# writes exactly one JSON reply line per request to fd W (protocol: the top of
# runtimes/python/server.py, "Workers of other languages"). stdout and stderr
# are the supervisor's pipes: whatever the function (or a child process of it)
# writes there is the execution's logs and errors.
#
# User code follows the Appwrite 0.13 / open-runtimes 0.0.x Ruby contract:
#
#   def main(req, res)          # req.payload (String), req.env (Hash), req.headers (Hash)
#     res.json({ ok: true })    # or res.send("text", 201); the value is the response
#   end
#
# Loading: the entrypoint is loaded at top level with Kernel.load, as the
# 0.0.x runtime did and as `ruby index.rb` would run it: `def main` and other
# top-level methods are private methods of Object, constants and classes are
# top-level (`class Foo` is ::Foo), top-level @ivars belong to the `main`
# object that main(req, res) is then called on. (Loading into an anonymous
# module, or instance_eval, would name classes "#<Module:0x...>::Foo" and,
# for load(path, mod), run the file's top level on another object than the
# one main is called on.) The worker is kept out of the way instead: all its
# code is in FunctionsRuntime, and once user code is loaded it calls nothing
# through an implicit self that falls back to Kernel (Process.exit!,
# Kernel.Integer, no `loop`), so a user's top-level `def loop` or
# `def Integer` cannot reach into it; its objects are reached with __send__.
# The code directory and the entrypoint's directory are appended to $LOAD_PATH
# (after the stdlib, so a code file cannot shadow it), and the working
# directory is the code directory.
#
# Dependencies: when the code directory has a Gemfile (or gems.rb), installed
# by build.sh into vendor/bundle (its .bundle/config says so), the bundle is
# set up (like `require "bundler/setup"`) before the entrypoint loads, so its
# `require "some_gem"` finds the gems; the gems are not required for it.
#
# The response: when main returns what res.send/res.json returned, that is it;
# otherwise (Ruby returns a method's last value whatever it is) the last
# res.send/res.json made counts; with none, a String return is the body (200)
# and a Hash/Array is sent as JSON; anything else is an error.

require "json"

module FunctionsRuntime
  WORKER_FILE = __FILE__
  UTF8 = Encoding::UTF_8
  FRAMES_KEPT = 30 # frames at each end of a longer stack trace
  NO_RESPONSE = "Function returned no response: return res.send(...) or res.json(...)"

  # `req` of the Appwrite 0.13 contract.
  class RuntimeRequest
    attr_reader :payload, :env, :headers

    def initialize(payload, env, headers)
      @payload = payload
      @env = env
      @headers = headers
    end

    def inspect
      "#<RuntimeRequest payload=#{@payload.inspect} headers=#{@headers.inspect}>"
    end
    alias to_s inspect
  end

  # What res.send / res.json return; main returns it.
  class RuntimeResult
    attr_reader :body, :status_code

    def initialize(body, status_code)
      @body = body
      @status_code = status_code
    end

    def inspect
      "#<RuntimeResult #{@status_code} #{@body.inspect}>"
    end
    alias to_s inspect
  end

  # `res` of the Appwrite 0.13 contract. (It defines #send: the worker only
  # ever uses __send__/public_send on it.)
  class RuntimeResponse
    attr_reader :last

    def initialize
      @last = nil
    end

    def send(text = "", status = 200)
      body = case text
             when String then text
             when nil then ""
             else text.to_s
             end
      @last = RuntimeResult.new(body, Kernel.Integer(status))
    end

    def json(obj, status = 200)
      @last = RuntimeResult.new(JSON.generate(obj), Kernel.Integer(status))
    end

    def inspect
      "#<RuntimeResponse>"
    end
    alias to_s inspect
  end

  # ---------------------------------------------------------------------------

  module_function

  # A String as valid UTF-8 (invalid bytes become U+FFFD); other values as text.
  def utf8(value)
    text = value.is_a?(String) ? value : value.to_s
    if text.encoding == UTF8
      text.valid_encoding? ? text : text.scrub("\uFFFD")
    elsif text.encoding == Encoding::BINARY || text.encoding == Encoding::US_ASCII
      text = text.dup.force_encoding(UTF8)
      text.valid_encoding? ? text : text.scrub("\uFFFD")
    else
      text.encode(UTF8, invalid: :replace, undef: :replace, replace: "\uFFFD")
    end
  rescue StandardError
    text.to_s.b.force_encoding(UTF8).scrub("\uFFFD")
  end

  # A JSON value's text with every string made valid UTF-8 (for replies that
  # JSON.generate refused).
  def clean(value)
    case value
    when String then utf8(value)
    when Hash then value.each_with_object({}) { |(k, v), h| h[clean(k)] = clean(v) }
    when Array then value.map { |v| clean(v) }
    else value
    end
  end

  def dump_line(obj)
    begin
      text = JSON.generate(obj, max_nesting: false, allow_nan: true)
    rescue JSON::GeneratorError, EncodingError
      text = JSON.generate(clean(obj), max_nesting: false, allow_nan: true)
    end
    text = text.b
    text << "\n"
  end

  # "<where>: <message> (<Class>)" and the stack trace, most recent call
  # first, like Ruby prints it, without the worker's own frames; then the
  # exceptions it was raised from (#cause).
  def format_exception(error)
    parts = []
    seen = {}
    while error && !seen[error.__id__] && parts.length < 8
      seen[error.__id__] = true
      parts << format_one(error)
      error = error.cause
    end
    utf8(parts.join("\n"))
  end

  def format_one(error)
    frames = error.backtrace || []
    ours = ->(frame) { frame.start_with?("#{WORKER_FILE}:") }
    # The frames below the function (the worker's loop) and the worker's own.
    frames = frames[0...-1] while !frames.empty? && (ours.(frames[-1]) || frames[-1].start_with?("<internal:"))
    frames = frames.reject(&ours)
    text = begin
      if error.respond_to?(:detailed_message) # Ruby 3.2+: says the class itself
        error.detailed_message(highlight: false).to_s
      else
        message = error.message.to_s
        message = "unhandled exception" if message.empty?
        first, rest = message.split("\n", 2)
        rest ? "#{first} (#{error.class})\n#{rest}" : "#{first} (#{error.class})"
      end
    rescue Exception # a broken #message
      "#{error.class} (its message could not be read)"
    end
    lines = frames.drop(1).map { |frame| "\tfrom #{frame}" }
    if lines.length > 2 * FRAMES_KEPT # e.g. SystemStackError: its message first, not cut away
      lines[FRAMES_KEPT...-FRAMES_KEPT] = "\t ... #{lines.length - 2 * FRAMES_KEPT} levels..."
    end
    text = "#{frames[0]}: #{text}" unless frames.empty?
    ([text.chomp] + lines).join("\n")
  end

  def env_text(value)
    value.is_a?(String) ? value : JSON.generate(value)
  end

  # Loads and runs the user's function.
  class Runtime
    def initialize
      @target = nil # the object main is called on
    end

    def handle(msg)
      return { "ok" => false, "error" => "request is not a JSON object" } unless msg.is_a?(Hash)

      case (kind = msg["type"])
      when "execute" then execute(msg)
      when "load" then load_code(msg)
      when "ping" then { "ok" => true, "version" => RUBY_VERSION }
      else { "ok" => false, "error" => "unknown message type: #{kind.inspect}" }
      end
    end

    def load_code(msg)
      return { "ok" => false, "error" => "code already loaded" } if @target

      code_dir = File.expand_path((msg["codeDir"] || "/code").to_s)
      entry = (msg["entrypoint"] || "index.rb").to_s
      if entry.start_with?("/") || entry.include?("\0")
        return { "ok" => false, "error" => "entrypoint must be inside the code directory: #{entry}" }
      end

      path = File.expand_path(entry, code_dir)
      unless path.start_with?(code_dir.end_with?("/") ? code_dir : "#{code_dir}/")
        return { "ok" => false, "error" => "entrypoint must be inside the code directory: #{entry}" }
      end
      return { "ok" => false, "error" => "entrypoint not found: #{path}" } unless File.file?(path)

      begin
        Dir.chdir(code_dir)
      rescue SystemCallError
        nil
      end
      [code_dir, File.dirname(path)].uniq.each { |dir| $LOAD_PATH << dir unless $LOAD_PATH.include?(dir) }

      begin
        setup_bundle(code_dir)
      rescue Exception => e
        return { "ok" => false,
                 "error" => "failed to set up the bundle of #{code_dir} (was it built?):\n#{FunctionsRuntime.format_exception(e)}" }
      end

      begin
        target = load_entrypoint(path)
      rescue Exception => e # SyntaxError, LoadError, SystemExit, ...
        return { "ok" => false, "error" => "failed to load #{entry}:\n#{FunctionsRuntime.format_exception(e)}" }
      end
      return { "ok" => false, "error" => "#{entry} does not define a main(req, res) function" } unless target

      @target = target
      { "ok" => true }
    end

    def execute(msg)
      return { "statusCode" => 500, "body" => "", "error" => "no code loaded" } unless @target

      payload = msg["payload"]
      payload = payload.nil? ? "" : JSON.generate(payload) unless payload.is_a?(String)
      env = msg["env"].is_a?(Hash) ? msg["env"] : {}
      headers = msg["headers"].is_a?(Hash) ? msg["headers"] : {}

      saved = {} # only the variables set here are restored
      env.each do |key, value|
        key = key.to_s
        old = ENV[key]
        ENV[key] = FunctionsRuntime.env_text(value)
        saved[key] = old unless saved.key?(key)
      rescue SystemCallError, ArgumentError, TypeError, JSON::GeneratorError
        nil # "=" or NUL in a name, ...: not in the process environment
      end

      res = RuntimeResponse.new
      status = 500
      body = ""
      error = ""
      begin
        result = @target.__send__(:main, RuntimeRequest.new(payload, env, headers), res)
        result = res.last if !result.is_a?(RuntimeResult) && res.last
        case result
        when RuntimeResult then status, body = result.status_code, result.body
        when String then status, body = 200, result
        when Hash, Array then status, body = 200, JSON.generate(result)
        when nil then error = NO_RESPONSE
        else error = "Function returned #{result.class}; return res.send(...) or res.json(...)"
        end
      rescue Exception => e # also exit, Interrupt, ScriptError
        status = 500
        body = ""
        error = FunctionsRuntime.format_exception(e)
      ensure
        restore_env(saved)
      end
      { "statusCode" => status, "body" => FunctionsRuntime.utf8(body), "error" => FunctionsRuntime.utf8(error) }
    end

    private

    def restore_env(saved)
      saved.each do |key, value|
        value.nil? ? ENV.delete(key) : ENV[key] = value
      rescue SystemCallError, ArgumentError
        nil
      end
    end

    # Sets up the bundle build.sh installed (vendor/bundle, per .bundle/config).
    def setup_bundle(code_dir)
      gemfile = %w[Gemfile gems.rb].map { |name| File.join(code_dir, name) }.find { |p| File.file?(p) }
      return unless gemfile

      ENV["BUNDLE_GEMFILE"] = gemfile
      # The settings build.sh wrote (path vendor/bundle), also in images that
      # point BUNDLE_APP_CONFIG elsewhere (the official ruby images do).
      app_config = File.join(code_dir, ".bundle")
      ENV["BUNDLE_APP_CONFIG"] = app_config if File.directory?(app_config)
      require "bundler"
      Bundler.ui.silence { Bundler.setup }
      Gem::DefaultUserInteraction.ui = nil if defined?(Gem::DefaultUserInteraction)
    end

    # The object to call main on (Ruby's top-level `main`), or nil when the
    # entrypoint defines no main.
    def load_entrypoint(path)
      top = TOPLEVEL_BINDING.receiver
      Kernel.load(path)
      top.respond_to?(:main, true) ? top : nil
    end
  end

  # Best effort: die with the supervisor even while busy (PR_SET_PDEATHSIG).
  def die_with_parent
    old = $VERBOSE
    $VERBOSE = nil
    require "fiddle"
    prctl = Fiddle::Function.new(Fiddle::Handle::DEFAULT["prctl"],
                                 [Fiddle::TYPE_INT, Fiddle::TYPE_LONG, Fiddle::TYPE_LONG,
                                  Fiddle::TYPE_LONG, Fiddle::TYPE_LONG], Fiddle::TYPE_INT)
    prctl.call(1, 9, 0, 0, 0) # PR_SET_PDEATHSIG, SIGKILL
  rescue Exception # no fiddle/libffi in this image
    nil
  ensure
    $VERBOSE = old
  end

  def flush_output
    [$stdout, $stderr, STDOUT, STDERR].uniq.each do |stream|
      stream.flush
    rescue Exception
      nil
    end
  end

  def serve(request_fd, reply_fd)
    me = Process.pid
    %w[TERM INT].each { |sig| Signal.trap(sig, "SYSTEM_DEFAULT") }
    die_with_parent
    STDOUT.sync = true
    STDERR.sync = true
    requests = IO.new(request_fd, "rb", autoclose: false)
    replies = IO.new(reply_fd, "wb", autoclose: false)
    [requests, replies].each { |io| io.close_on_exec = true }
    replies.sync = true
    runtime = Runtime.new
    while true # not Kernel#loop: user code may define `loop`
      line = begin
        requests.gets("\n")
      rescue SystemCallError, IOError
        nil
      end
      Process.exit!(0) if line.nil? || !line.end_with?("\n") # the supervisor went away

      msg = nil
      begin
        msg = JSON.parse(line.force_encoding(UTF8).scrub("\uFFFD"), max_nesting: false, allow_nan: true)
        out = runtime.handle(msg)
      rescue Exception => e # a bug here: say so, the supervisor decides
        out = { "ok" => false, "error" => "runtime error: #{format_exception(e)}" }
      end
      Process.exit!(0) if Process.pid != me # a child the user's code forked, back in this loop: never answer

      flush_output
      out["id"] = msg.is_a?(Hash) ? msg["id"] : nil
      begin
        replies.write(dump_line(out))
      rescue SystemCallError, IOError
        Process.exit!(0) # the supervisor went away
      end
    end
  end
end

if $PROGRAM_NAME == __FILE__
  unless ARGV.length == 2 && ARGV.all? { |a| a.match?(/\A\d+\z/) }
    warn "usage: ruby worker.rb REQUEST_FD REPLY_FD"
    exit 2
  end
  FunctionsRuntime.serve(Integer(ARGV[0]), Integer(ARGV[1]))
end
