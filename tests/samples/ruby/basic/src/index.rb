# The basic sample: one behaviour per payload (tests/samples, every language).
#   req.payload - the request body (String)
#   req.env     - the function's variables and APPWRITE_FUNCTION_* (Hash)
#   req.headers - the request headers (Hash)
#   res.send(text, status = 200) / res.json(obj, status = 200) - the response

def visible_env(env)
  env.select { |key, _| key.start_with?("APPWRITE_FUNCTION_") || key == "GREETING" }
end

def main(req, res)
  case req.payload
  when "echo"
    res.json({ payload: req.payload, headers: req.headers, env: visible_env(req.env) })
  when "unicode"
    res.send("héllo ☃ #{req.payload.length}")
  when "print"
    puts "to stdout"
    $stderr.puts "to stderr"
    res.send("printed")
  when "child"
    system("echo from a child")
    res.send("ran")
  when "status"
    res.send("short and stout", 418)
  when "raise"
    raise "boom"
  when "sleep"
    sleep 30
    res.send("late")
  else
    res.send("default:#{req.payload}")
  end
end
